"""Pipelines whose isolated phases tell which child ran them (loaded by file path, also
in the warm pool's child processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sisas.pipeline import Context, Pipeline

warm = Pipeline("warm", version="1")
HOARD: list[bytearray] = []
"""Memory a phase keeps after it returns (a leak the pool must not carry forward)."""


@warm.phase(timeout=30)
def first(ctx: Context, input: dict[str, str]) -> int:
    """The child's pid; ``crash`` exits the child without a result, ``hoard`` keeps
    100 MB in the child after the attempt."""
    if input.get("do") == "crash":
        os._exit(3)
    if input.get("do") == "hoard":
        HOARD.append(bytearray(100 * 1024 * 1024))
    return os.getpid()


@warm.phase(timeout=0.5, retries=0)
def second(ctx: Context, input: dict[str, str], first: int) -> int:
    """The child's pid; ``hang`` writes it to ``marker`` and ignores the timeout."""
    if input.get("do") == "hang":
        Path(input["marker"]).write_text(str(os.getpid()))
        time.sleep(60)
    return os.getpid()


sleeper = Pipeline("warm_sleeper", version="1")


@sleeper.phase(timeout=30)
def pid(ctx: Context, input: dict[str, str]) -> int:
    return os.getpid()


@sleeper.phase(timeout=600)
def nap(ctx: Context, input: dict[str, str], pid: int) -> int:
    """Writes its pid to ``marker`` and sleeps: a run to cancel."""
    Path(input["marker"]).write_text(str(os.getpid()))
    time.sleep(600)
    return os.getpid()
