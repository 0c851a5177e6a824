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
# A fan-out's untimed warm-up run is this wide (imports, server tables, thread pools).
FANOUT_WARMUP_ITEMS = 10


def parse_args(doc: str | None) -> argparse.Namespace:
    """``--runs N`` measured runs of the 7-step chain (default 30; 0: none) after
    ``--warmup W`` unmeasured ones (default 3); ``--fanout 100,1000``: also a fan-out of
    each of these widths, ``--fanout-runs R`` measured runs each (default 3), after one
    untimed fan-out of :data:`FANOUT_WARMUP_ITEMS` items."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fanout", default="", help="comma-separated fan-out widths")
    ap.add_argument("--fanout-runs", type=int, default=3)
    args = ap.parse_args()
    try:
        args.fanout = [int(x) for x in args.fanout.split(",") if x.strip()]
    except ValueError:
        ap.error("--fanout takes comma-separated integers")
    if args.runs < 0 or args.warmup < 0 or args.fanout_runs < 1 or any(n < 1 for n in args.fanout):
        ap.error("--runs, --warmup must be >= 0; --fanout-runs and widths >= 1")
    if args.runs == 0 and not args.fanout:
        ap.error("nothing to do: --runs 0 and no --fanout")
    return args


def progress(peer: str, variant: str, items: int) -> None:
    """Say which fan-out starts (the driver names it if the run times out there)."""
    sys.stdout.write(json.dumps({"progress": f"{peer} {variant} {items} items"}) + "\n")
    sys.stdout.flush()


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


def emit_fanout(
    peer: str, variant: str, version: str, items: int, times_ms: list[float], **extra: Any
) -> None:
    """Print a fan-out's result line: wall time per run (start to the join's result),
    per item, and every measured time (the driver pools them across rounds)."""
    p50 = statistics.median(times_ms)
    row: dict[str, Any] = {
        "peer": peer,
        "variant": variant,
        "kind": "fanout",
        "items": items,
        "runs": len(times_ms),
        "run_ms_p50": round(p50, 3),
        "run_ms_p90": round(quantile(times_ms, 0.9), 3),
        "per_item_ms": round(p50 / items, 4),
        "times_ms": [round(t, 3) for t in times_ms],
        "version": version,
    }
    row.update(extra)
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()
