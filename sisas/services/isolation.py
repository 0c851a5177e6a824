"""Running a phase in a child process, so its timeout and memory limit are enforced.

A phase that ignores its timeout or grows past its memory limit is killed (SIGKILL),
and the outcome says so (``Timeout`` or ``ResourceExhausted``). The child imports the
pipeline from the same source the worker loaded it from.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from sisas.handlers.execute import Outcome, PhaseInputs, execute_phase
from sisas.signals.kinds import ErrorInfo, ErrorKind

__all__ = ["run_isolated"]

_CTX = multiprocessing.get_context("spawn")
READY = b"ready"
STARTUP_LIMIT = 120.0
"""Seconds a child may take to import Python, sisas and the pipeline before it is
declared failed (its phase's own timeout starts once it is ready)."""


def _child(
    conn: Connection, source: str, pipeline: str, phase: str, inputs: bytes, kwargs: dict[str, Any]
) -> None:
    from sisas.loader import load_pipelines

    pipe = load_pipelines([source], entry_points=False)[pipeline]
    conn.send_bytes(READY)  # the timeout counts from here, not from interpreter start-up
    outcome = execute_phase(
        pipe,
        phase,
        msgspec.msgpack.decode(inputs, type=PhaseInputs),
        clock=time.perf_counter,
        **kwargs,
    )
    conn.send_bytes(msgspec.msgpack.encode(outcome))
    conn.close()


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _failed(kind: ErrorKind, message: str, start: float, retryable: bool) -> Outcome:
    return Outcome(
        status="failed",
        duration=time.perf_counter() - start,
        error=ErrorInfo(kind=kind, message=message, retryable=retryable),
    )


async def run_isolated(
    source: str,
    pipeline: str,
    phase: str,
    inputs: PhaseInputs,
    *,
    timeout: float | None,
    memory_limit: int | None,
    kwargs: dict[str, Any],
) -> tuple[Outcome, bool]:
    """Run the phase in a child; return its outcome and whether it timed out."""
    start = time.perf_counter()
    parent, child = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(
        target=_child,
        daemon=True,
        args=(child, source, pipeline, phase, msgspec.msgpack.encode(inputs), kwargs),
    )
    await asyncio.to_thread(proc.start)
    child.close()
    deadline: float | None = None
    ready = False
    try:
        while True:
            if parent.poll():
                try:
                    data = parent.recv_bytes()
                except EOFError:
                    data = b""
                if data == READY:
                    ready = True
                    deadline = time.perf_counter() + timeout if timeout else None
                    continue
                if data:
                    return msgspec.msgpack.decode(data, type=Outcome), False
            if not proc.is_alive() and not parent.poll():
                return _failed(
                    "HardFailure",
                    f"the phase's process exited with code {proc.exitcode} without a result",
                    start,
                    True,
                ), False
            if not ready and time.perf_counter() > start + STARTUP_LIMIT:
                proc.kill()
                return _failed(
                    "HardFailure",
                    f"the phase's process did not load the pipeline within {STARTUP_LIMIT:.0f}s",
                    start,
                    True,
                ), False
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                return _failed(
                    "Timeout", f"killed after its timeout of {timeout}s", start, True
                ), True
            if memory_limit is not None and proc.pid and _rss(proc.pid) > memory_limit:
                proc.kill()
                return _failed(
                    "ResourceExhausted",
                    f"killed when it used more than its memory limit of {memory_limit} bytes",
                    start,
                    False,
                ), False
            await asyncio.sleep(0.02)
    finally:
        if proc.is_alive():
            proc.kill()
        await asyncio.to_thread(proc.join, 5)
        parent.close()
