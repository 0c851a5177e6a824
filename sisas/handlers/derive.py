"""Deterministic derivations from a run's seed: phase seeds, backoff delays, fingerprints."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from sisas.signals.digest import semantic_digest

__all__ = ["backoff_delay", "derive_seed", "keyed_run_id", "run_fingerprint", "unit_interval"]


def _h(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def derive_seed(run_seed: int, phase: str, item: int | None = None) -> int:
    """The seed of a phase (or one item of it): 63 bits from the run seed and its name."""
    raw = _h("seed", run_seed, phase, "" if item is None else item)
    return int.from_bytes(raw[:8], "big") >> 1


def unit_interval(*parts: object) -> float:
    """A number in [0, 1) drawn deterministically from ``parts``."""
    return int.from_bytes(_h("u", *parts)[:8], "big") / 2**64


def backoff_delay(
    run_seed: int,
    phase: str,
    attempt: int,
    *,
    base: float,
    factor: float,
    cap: float,
    item: int | None = None,
) -> float:
    """Exponential backoff before ``attempt`` (1-based retry), with jitter from the seed.

    ``min(cap, base * factor**(attempt-1))`` scaled by a factor in [0.5, 1.0): equal runs
    wait equally long, different runs spread out.
    """
    raw = min(cap, base * factor ** max(0, attempt - 1))
    return round(raw * (0.5 + 0.5 * unit_interval(run_seed, phase, item, attempt)), 6)


def run_fingerprint(outputs: Mapping[str, str], checks: Mapping[str, bool]) -> str:
    """The determinism fingerprint of a run: phase output digests and check outcomes.

    Sorted by name, with no times, hosts or attempt numbers: two runs that computed the
    same things have the same fingerprint however they were scheduled.
    """
    return semantic_digest(
        {"outputs": dict(sorted(outputs.items())), "checks": dict(sorted(checks.items()))}
    )


def keyed_run_id(pipeline: str, key: str) -> str:
    """The run id an idempotency key names: the same key, the same run."""
    digest = hashlib.sha256(f"{pipeline}\0{key}".encode()).hexdigest()
    return f"{pipeline[:40]}-{digest[:12]}"
