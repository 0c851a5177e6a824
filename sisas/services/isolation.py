"""What running a phase in a child process needs, shared by the worker's pool of warm
children (:mod:`sisas.services.isolation_pool`): the frames children answer in, the
start-up limit, the child's environment, its resident memory, a failed outcome.

A phase that ignores its timeout or grows past its memory limit is killed (SIGKILL),
and the outcome says so (``Timeout`` or ``ResourceExhausted``). A child is a fresh
``python -m sisas.services.isolation_pool`` that imports the pipeline from the same
source the worker loaded it from. It is not a ``multiprocessing`` child: those re-run
the parent's main script, so a user's script that starts a client serving its pipelines
would run again in every phase's child (and wait there for ever) unless it had an
``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import os
import struct
import sys
import time

from sisas.handlers.execute import Outcome
from sisas.signals.kinds import ErrorInfo, ErrorKind

__all__ = ["FRAME_LENGTH", "STARTUP_LIMIT", "child_env", "failed", "rss", "write_frame"]

STARTUP_LIMIT = 120.0
"""Seconds a child may take to import Python, sisas and the pipeline before it is
declared failed (its phase's own timeout starts once it is ready)."""
FRAME_LENGTH = struct.Struct(">I")
"""The length prefix of a frame (a msgpack message) on a child's answers pipe."""


def write_frame(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` as one length-prefixed frame."""
    view = memoryview(FRAME_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def rss(pid: int) -> int:
    """The resident memory of process ``pid`` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def failed(kind: ErrorKind, message: str, start: float, retryable: bool) -> Outcome:
    """A failed outcome of an attempt that began at ``start``."""
    return Outcome(
        status="failed",
        duration=time.perf_counter() - start,
        error=ErrorInfo(kind=kind, message=message, retryable=retryable),
    )


def child_env() -> dict[str, str]:
    """The worker's environment, with its import path: the child finds the pipeline's
    modules where the worker found them (as a spawned multiprocessing child would)."""
    path = os.pathsep.join(p for p in sys.path if p)
    return {**os.environ, "PYTHONPATH": path}
