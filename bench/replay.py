"""Replay speed: signals verified per second vs hashing the same bytes; rerun overhead.

    .venv/bin/python -m bench.replay [--signals N] [--rounds R] [--reruns K]

verify (in this process, the stored bytes already in memory, so reading is not in it;
bench/projection.py measures reading the stream):

- raw:      ``hashlib.sha256(wire)`` of every stored message: the limit;
- decode:   the strict decoder alone (JSON to a typed signal, canonical bytes, own hash);
- verify:   what ``sisas replay verify --all --no-projection`` does per message: decode,
            chain checks, placement rules, ``evolve``, then each run's state digest;
- signed:   the same on signed signals with a trusted key (ed25519 per signal).

rerun: the example pipeline's run (examples/clustering.py, 28 attempts) rerun K times
from its recorded inputs, serial and on 2 worker processes: wall time against the sum of
the phases' own compute (what a rerun cannot avoid).

Prints rates and ratios against raw hashing, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.synthetic import synthetic_runs
from sisas.client.verification import rerun_signals
from sisas.handlers.local import LocalRun
from sisas.loader import load_pipelines
from sisas.replay.verify import LogVerifier, report
from sisas.security.keys import generate_seed
from sisas.signals import encode_signal, log_subject
from sisas.signals.records import decode_record
from sisas.signals.signing import Signer

ROOT = Path(__file__).parent.parent


def stored(n: int, signer: Signer | None = None) -> list[tuple[int, str, bytes]]:
    out: list[tuple[int, str, bytes]] = []
    for run in synthetic_runs(n // 28 + 1):
        for s in run:
            if signer is not None:
                s = signer.sign(s)
            out.append(
                (len(out) + 1, log_subject(s.pipeline, s.run_id, s.phase, s.kind), encode_signal(s))
            )
        if len(out) >= n:
            break
    return out


def rate(fn: Callable[[], object], count: int, rounds: int) -> float:
    """The median rate (items per second) over ``rounds`` runs of ``fn``."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def raw(msgs: list[tuple[int, str, bytes]]) -> None:
    sha = hashlib.sha256
    for _, _, wire in msgs:
        sha(wire).digest()


def decode(msgs: list[tuple[int, str, bytes]]) -> None:
    for seq, subject, wire in msgs:
        decode_record(seq, subject, wire)


def verify(msgs: list[tuple[int, str, bytes]], trusted: frozenset[str] = frozenset()) -> None:
    verifier = LogVerifier(trusted=trusted)
    for seq, subject, wire in msgs:
        verifier.add(decode_record(seq, subject, wire))
    result = report(verifier)
    assert result.intact, result.first


def rerun_overhead(reruns: int, workers: int) -> tuple[float, float]:
    """(wall seconds, phases' own compute seconds) per rerun of the example run."""
    [pipe] = load_pipelines([str(ROOT / "examples" / "clustering.py")], entry_points=False).values()
    run = LocalRun(pipe, "bench-1", at=datetime(2026, 11, 1, tzinfo=UTC), clock=time.perf_counter)
    run.start((ROOT / "examples" / "data" / "points.json").read_bytes(), seed=7)
    run.run()

    async def fetch(digest: str) -> bytes | None:
        return run.artifacts.get(digest)

    async def all_reruns() -> tuple[float, float]:
        walls, computes = [], []
        for _ in range(reruns):
            start = time.perf_counter()
            verdict = await rerun_signals(run.signals, {pipe.name: pipe}, fetch, workers=workers)
            walls.append(time.perf_counter() - start)
            computes.append(verdict.compute_seconds)
            assert verdict.deterministic
        return statistics.median(walls), statistics.median(computes)

    return asyncio.run(all_reruns())


def measure(signals: int, rounds: int, reruns: int) -> dict[str, float]:
    """Rates of hashing, decoding, verifying and signed verifying; rerun overhead."""
    signer = Signer(generate_seed())
    plain = stored(signals)
    signed = stored(min(signals, 50_000), signer)
    n, ns = len(plain), len(signed)
    mib = sum(len(w) for _, _, w in plain) / 2**20
    print(
        f"{n:,} stored signals ({mib:.1f} MiB, {mib * 2**20 / n:.0f} bytes each), {rounds} rounds"
    )
    r_raw = rate(lambda: raw(plain), n, rounds)
    r_dec = rate(lambda: decode(plain), n, rounds)
    r_ver = rate(lambda: verify(plain), n, rounds)
    r_sig = rate(lambda: verify(signed, frozenset({signer.public_key})), ns, rounds)
    print(f"raw sha256 of the stored bytes  {r_raw:>12,.0f} signals/s")
    print(f"decode (strict, own hash)       {r_dec:>12,.0f} signals/s  ratio {r_dec / r_raw:.3f}")
    print(f"verify (chain, rules, refold)   {r_ver:>12,.0f} signals/s  ratio {r_ver / r_raw:.3f}")
    print(f"verify signed (ed25519)         {r_sig:>12,.0f} signals/s  ratio {r_sig / r_raw:.3f}")
    per = {
        k: 1e6 / v
        for k, v in (("raw", r_raw), ("decode", r_dec), ("verify", r_ver), ("signed", r_sig))
    }
    print(
        f"per signal: hash {per['raw']:.1f} us, decode {per['decode']:.1f} us, "
        f"chain+rules+refold {per['verify'] - per['decode']:.1f} us, "
        f"signature {per['signed'] - per['verify']:.1f} us"
    )
    out = {"signals": n, "raw_per_s": r_raw, "decode_per_s": r_dec, "verify_per_s": r_ver}
    out["verify_signed_per_s"] = r_sig
    for workers in (1, 2):
        wall, compute = rerun_overhead(reruns, workers)
        out[f"rerun_{workers}w_wall_ms"] = wall * 1000
        out[f"rerun_{workers}w_compute_ms"] = compute * 1000
        print(
            f"rerun of the example run ({workers} worker{'s' if workers > 1 else ''}): "
            f"{wall * 1000:.1f} ms wall, phases' own compute {compute * 1000:.1f} ms, "
            f"overhead {(wall - compute) * 1000:.1f} ms ({wall / max(compute, 1e-9):.1f}x compute)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reruns", type=int, default=5)
    args = parser.parse_args()
    measure(args.signals, args.rounds, args.reruns)


if __name__ == "__main__":
    main()
