"""Pipelines that run long, to be cancelled (loaded by file path, also in child processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sisas.pipeline import Context, Pipeline

sleepy = Pipeline("sleepy", version="1")


@sleepy.phase()
def start(ctx: Context, input: dict[str, str]) -> str:
    return str(input["marker_dir"])


@sleepy.phase()
def polite(ctx: Context, start: str) -> str:
    """Checks ctx.cancelled between steps, as a long phase should."""
    for _ in range(6000):
        if ctx.cancelled:
            Path(start, "polite-saw-cancel").write_text("yes")
            return "stopped"
        time.sleep(0.05)
    return "done"


@sleepy.phase(timeout=600)
def isolated(ctx: Context, start: str) -> str:
    """In a child process (timeout=): killed when the run is cancelled."""
    Path(start, "isolated-pid").write_text(str(os.getpid()))
    time.sleep(600)
    return "done"


@sleepy.phase()
def after(ctx: Context, polite: str, isolated: str) -> str:
    return polite + isolated


stubborn = Pipeline("stubborn", version="1")


@stubborn.phase()
def nap(ctx: Context, input: dict[str, float]) -> float:
    """Ignores cancellation: sleeps in the worker's thread."""
    time.sleep(float(input.get("seconds", 600)))
    return 1.0
