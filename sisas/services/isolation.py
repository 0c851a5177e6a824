"""Running a phase in a child process, so its timeout and memory limit are enforced.

A phase that ignores its timeout or grows past its memory limit is killed (SIGKILL),
and the outcome says so (``Timeout`` or ``ResourceExhausted``). The child is a fresh
``python -m sisas.services.isolation`` that imports the pipeline from the same source the
worker loaded it from. It is not a ``multiprocessing`` child: those re-run the parent's
main script, so a user's script that starts a client serving its pipelines would run
again in every phase's child (and wait there for ever) unless it had an
``if __name__ == "__main__"`` guard. The request goes in on the child's stdin; its
answers (ready, then the outcome) come back as length-prefixed msgpack frames on a pipe
of their own, so whatever the phase prints to stdout or stderr reaches the worker's, as
an in-process phase's does.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from typing import Any

import msgspec

from sisas.handlers.execute import Outcome, PhaseInputs, execute_phase
from sisas.signals.kinds import ErrorInfo, ErrorKind

__all__ = ["run_isolated"]

READY = b"ready"
STARTUP_LIMIT = 120.0
"""Seconds a child may take to import Python, sisas and the pipeline before it is
declared failed (its phase's own timeout starts once it is ready)."""
_LENGTH = struct.Struct(">I")


class _Request(msgspec.Struct, frozen=True):
    source: str
    pipeline: str
    phase: str
    inputs: PhaseInputs
    kwargs: dict[str, Any]


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _child(answers: int) -> None:
    """The child's side: read the request from stdin, answer on the ``answers`` fd."""
    from sisas.loader import load_pipelines

    request = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=_Request)
    pipe = load_pipelines([request.source], entry_points=False)[request.pipeline]
    _write_frame(answers, READY)  # the timeout counts from here, not from start-up
    outcome = execute_phase(
        pipe, request.phase, request.inputs, clock=time.perf_counter, **request.kwargs
    )
    _write_frame(answers, msgspec.msgpack.encode(outcome))
    os.close(answers)


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
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sisas.services.isolation",
            str(write_fd),
            stdin=asyncio.subprocess.PIPE,
            pass_fds=(write_fd,),
            env=_child_env(),
        )
    finally:
        os.close(write_fd)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    async def read_frames() -> None:
        try:
            while True:
                size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
                frames.put_nowait(await reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            frames.put_nowait(b"")  # the child closed its end: no more answers

    frames_task = asyncio.create_task(read_frames())
    try:
        assert proc.stdin is not None
        request = _Request(source, pipeline, phase, inputs, kwargs)
        proc.stdin.write(msgspec.msgpack.encode(request))
        await proc.stdin.drain()
        proc.stdin.close()
        return await _watch(proc, frames, start, timeout, memory_limit)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        frames_task.cancel()
        transport.close()


def _child_env() -> dict[str, str]:
    """The worker's environment, with its import path: the child finds the pipeline's
    modules where the worker found them (as a spawned multiprocessing child would)."""
    path = os.pathsep.join(p for p in sys.path if p)
    return {**os.environ, "PYTHONPATH": path}


async def _watch(
    proc: asyncio.subprocess.Process,
    frames: asyncio.Queue[bytes],
    start: float,
    timeout: float | None,
    memory_limit: int | None,
) -> tuple[Outcome, bool]:
    """Wait for the child's outcome, killing it past its start-up limit, its timeout or
    its memory limit."""
    deadline: float | None = None
    ready = False
    while True:
        try:
            data = await asyncio.wait_for(frames.get(), 0.02)
        except TimeoutError:
            data = None
        if data == READY:
            ready = True
            deadline = time.perf_counter() + timeout if timeout else None
            continue
        if data:
            return msgspec.msgpack.decode(data, type=Outcome), False
        if data == b"":  # the answers pipe closed without an outcome
            code = await proc.wait()
            return _failed(
                "HardFailure",
                f"the phase's process exited with code {code} without a result",
                start,
                True,
            ), False
        if not ready and time.perf_counter() > start + STARTUP_LIMIT:
            return _failed(
                "HardFailure",
                f"the phase's process did not load the pipeline within {STARTUP_LIMIT:.0f}s",
                start,
                True,
            ), False
        if deadline is not None and time.perf_counter() > deadline:
            return _failed("Timeout", f"killed after its timeout of {timeout}s", start, True), True
        if memory_limit is not None and _rss(proc.pid) > memory_limit:
            return _failed(
                "ResourceExhausted",
                f"killed when it used more than its memory limit of {memory_limit} bytes",
                start,
                False,
            ), False


if __name__ == "__main__":
    _child(int(sys.argv[1]))
