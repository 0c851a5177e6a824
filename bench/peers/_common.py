"""Shared by the peer scripts (stdlib only): arguments, timing loop, one JSON line per variant.

The peer scripts run inside each peer's own venv with this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

STEPS = 7


def parse_args(doc: str | None) -> argparse.Namespace:
    """``--runs N`` measured runs (default 30) after ``--warmup W`` unmeasured ones (default 3)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    return args


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (``q`` in [0, 1]) of a non-empty list."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_runs(
    fn: Callable[[], object], runs: int, warmup: int, pause_s: float = 0.0
) -> list[float]:
    """Wall time in ms of each of ``runs`` calls of ``fn``, after ``warmup`` untimed calls.

    ``pause_s``: an untimed sleep before each measured call (lets background work drain).
    """
    for _ in range(warmup):
        fn()
    out: list[float] = []
    for _ in range(runs):
        if pause_s:
            time.sleep(pause_s)
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


async def time_runs_async(
    fn: Callable[[], Awaitable[object]], runs: int, warmup: int
) -> list[float]:
    """Async twin of :func:`time_runs`."""
    for _ in range(warmup):
        await fn()
    out: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def emit(peer: str, variant: str, version: str, times_ms: list[float], **extra: Any) -> None:
    """Print the result line the driver parses (one JSON object, flushed)."""
    p50 = statistics.median(times_ms)
    row: dict[str, Any] = {
        "peer": peer,
        "variant": variant,
        "runs": len(times_ms),
        "run_ms_p50": round(p50, 3),
        "run_ms_p90": round(quantile(times_ms, 0.9), 3),
        "per_step_ms": round(p50 / STEPS, 3),
        "version": version,
    }
    row.update(extra)
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()
