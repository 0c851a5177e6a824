"""A worker's warm pool of child processes for isolated phases (``timeout=``,
``memory_limit=``).

Starting a child per attempt (a child started per attempt) pays for a
Python interpreter and the pipeline's imports every time: about a second on a loaded
machine, for a phase that may compute for a millisecond. A pool child is started once,
loads the pipeline once, and then runs attempt after attempt:

- A child serves one pipeline as loaded from one source with one code fingerprint (its
  key); it never runs another pipeline's or another version's code. Children of a
  fingerprint the worker no longer runs (a reload, :mod:`sisas.services.reloading`) are
  retired: an idle one at once, a busy one when its attempt ends.
- An attempt goes to an idle child of its key over the child's stdin; the child answers
  on a pipe of its own (started, then the outcome), as length-prefixed frames, so what
  the phase prints reaches the worker's stdout and stderr as before.
- The guarantees of a fresh child hold: the timeout counts from the moment the child
  starts the attempt, and a child past its timeout or memory limit is killed (SIGKILL)
  with the same outcome (``Timeout``, recorded as ``phase_timed_out``;
  ``ResourceExhausted``); a child that dies fails its attempt ("exited with code N
  without a result") and a cancelled attempt kills its child. A killed child is
  replaced in the background, so the next attempt finds a warm one.
- A child whose memory grew by more than :data:`GROWTH_LIMIT` since it loaded, or that
  served :data:`MAX_USES` attempts, is retired after its attempt: the next attempt's
  memory limit then counts from a fresh child's size, as before.
- The pool keeps at most ``size`` children (the worker's concurrency: no more attempts
  run at once), evicting the least recently used idle child of another key when a new
  key needs one. Closing the pool ends idle children cleanly (their stdin closes and
  they exit) and kills busy ones.

What a warm child does not give: module globals a phase changes stay changed for the
next attempt in that child, as they do for phases run in the worker's own threads.
Randomness comes from ``ctx.rng`` (seeded per attempt), so runs stay deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from sisas.handlers.attempt_log import AttemptLog
from sisas.handlers.execute import Outcome, PhaseInputs, execute_phase
from sisas.services.isolation import (
    FRAME_LENGTH,
    STARTUP_LIMIT,
    child_env,
    failed,
    rss,
    write_frame,
)
from sisas.services.output_capture import captured_output

if TYPE_CHECKING:
    from sisas.pipeline import Pipeline

__all__ = ["GROWTH_LIMIT", "IsolationPool", "MAX_USES"]

log = logging.getLogger("sisas.isolation")
GROWTH_LIMIT = 64 * 1024 * 1024
"""Bytes a child's resident memory may grow by, since it loaded the pipeline, and still
be reused: past it the child is retired after its attempt (a leak, or memory the
allocator keeps), so a memory limit is not eaten by earlier attempts."""
MAX_USES = 1000
"""Attempts one child serves before it is retired (a bound on slow leaks)."""
CLOSE_GRACE = 5.0
"""Seconds an idle child has to exit once its stdin is closed before it is killed."""

Key = tuple[str, str, str]
"""(source, pipeline name, code fingerprint): the code a child holds."""

# Frames the child writes: its fingerprint once loaded, then per attempt "started" and
# the outcome (msgpack).
_READY, _STARTED, _OUTCOME, _LOG = b"R", b"S", b"O", b"L"


class _Load(msgspec.Struct, frozen=True):
    source: str
    pipeline: str


class _Attempt(msgspec.Struct, frozen=True):
    phase: str
    inputs: PhaseInputs
    kwargs: dict[str, Any]


# -- the child's side -------------------------------------------------------------------


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame on ``stream``; None once the worker closed it."""
    head = stream.read(FRAME_LENGTH.size)
    if len(head) < FRAME_LENGTH.size:
        return None
    size = FRAME_LENGTH.unpack(head)[0]
    data = stream.read(size)
    return data if len(data) == size else None


def _child(answers: int) -> None:
    """Load the pipeline the first frame names, answer ready with its fingerprint, then
    run each attempt that arrives until stdin closes."""
    from sisas.loader import load_pipelines

    # Ctrl-C in a terminal reaches the whole process group: the worker decides when its
    # children end (stdin closed, or killed), not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = sys.stdin.buffer
    first = _read_frame(requests)
    if first is None:
        return
    load = msgspec.msgpack.decode(first, type=_Load)
    pipe = load_pipelines([load.source], entry_points=False)[load.pipeline]
    write_frame(answers, _READY + pipe.plan().fingerprint.encode())
    decoder = msgspec.msgpack.Decoder(_Attempt)
    encoder = msgspec.msgpack.Encoder()
    while (data := _read_frame(requests)) is not None:
        attempt = decoder.decode(data)
        write_frame(answers, _STARTED)  # the timeout counts from here
        # Each line goes to the worker as it is written: a child killed past its timeout
        # loses none of what it logged.
        log = AttemptLog(
            time.perf_counter, sink=lambda line: write_frame(answers, _LOG + line.encode())
        )
        with captured_output(log):
            outcome = execute_phase(
                pipe,
                attempt.phase,
                attempt.inputs,
                clock=time.perf_counter,
                log=log,
                **attempt.kwargs,
            )
        write_frame(answers, _OUTCOME + encoder.encode(outcome))


# -- the worker's side ------------------------------------------------------------------


class _Answers(asyncio.Protocol):
    """Splits the child's answers pipe into frames; b"" once the pipe closed."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= FRAME_LENGTH.size:
            size = FRAME_LENGTH.unpack_from(self._buffer)[0]
            end = FRAME_LENGTH.size + size
            if len(self._buffer) < end:
                return
            self.frames.put_nowait(bytes(self._buffer[FRAME_LENGTH.size : end]))
            del self._buffer[:end]

    def connection_lost(self, exc: Exception | None) -> None:
        self.frames.put_nowait(b"")


class _Child:
    """One started child holding the code of ``key``."""

    def __init__(
        self,
        key: Key,
        proc: asyncio.subprocess.Process,
        answers: _Answers,
        transport: asyncio.BaseTransport,
    ) -> None:
        self.key = key
        self.proc = proc
        self.answers = answers
        self.transport = transport
        self.baseline = 0
        """Resident bytes once the pipeline was loaded."""
        self.uses = 0
        self.fingerprint = ""
        """The fingerprint of the code the child loaded (the file's, when it changed on
        disk since the worker loaded it)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(FRAME_LENGTH.pack(len(frame)) + frame)

    async def exit_code(self) -> int:
        return await self.proc.wait()

    async def end(self, *, kill: bool) -> None:
        """Close the child's stdin (it exits once its attempt, if any, is done) and wait
        for it; killed at once with ``kill``, or past :data:`CLOSE_GRACE`."""
        try:
            if kill and self.proc.returncode is None:
                self.proc.kill()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), CLOSE_GRACE)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        finally:
            self.transport.close()


class IsolationPool:
    """At most ``size`` started children that run isolated attempts (see the module).

    Use as ``async with``: leaving it ends every child. :meth:`run` may be called outside
    the block too (children then live until :meth:`close`).
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: list[_Child] = []
        """Idle children, least recently used first."""
        self._busy: set[_Child] = set()
        self._current: set[Key] | None = None
        """The keys still wanted (None: every key); others are retired."""
        self._starting: dict[Key, int] = {}
        """Children being started ahead of the attempts that will want them."""
        self._changed = asyncio.Condition()
        """Notified when a child started ahead is idle (or failed to start)."""
        self._ending: set[asyncio.Task[None]] = set()
        """Children ending, and children being started ahead (:meth:`_ahead`)."""
        self._ahead_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.spawned = 0
        """Children started, replacements included."""
        self.reused = 0
        """Attempts that ran in a child that had run one before."""
        self.killed = 0
        """Children killed mid-attempt: timeout, memory, cancellation, closing."""

    async def __aenter__(self) -> IsolationPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    def key(pipe: Pipeline) -> Key:
        """The code ``pipe`` runs, as the pool tells children apart."""
        return (pipe.source or "", pipe.name, pipe.plan().fingerprint)

    @property
    def pids(self) -> list[int]:
        """The process ids of the children alive now, idle or busy."""
        return [c.pid for c in [*self._idle, *self._busy] if c.proc.returncode is None]

    async def run(
        self,
        pipe: Pipeline,
        phase: str,
        inputs: PhaseInputs,
        *,
        timeout: float | None,
        memory_limit: int | None,
        kwargs: dict[str, Any],
        log: AttemptLog | None = None,
    ) -> tuple[Outcome, bool]:
        """Run the attempt in a child holding ``pipe``'s code; its outcome and whether it
        timed out. The outcomes and the killing are those of
        a child started per attempt; a cancelled call kills its child.
        Raises :class:`asyncio.CancelledError` when the pool is closed meanwhile (the
        attempt is abandoned, not failed: the worker is stopping)."""
        start = time.perf_counter()
        key = self.key(pipe)
        if self._closing:
            raise asyncio.CancelledError  # the worker is stopping: the work is redelivered
        child = self._take(key)
        while child is None and self._starting.get(key):
            async with self._changed:  # a child for it is on its way: cheaper to wait
                await self._changed.wait()
            child = self._take(key)
        if child is None:
            if self._closing:
                raise asyncio.CancelledError
            spawned = await self._spawn(key, start)
            if isinstance(spawned, Outcome):
                return spawned, False
            child = spawned
        self.reused += child.uses > 0
        self._busy.add(child)
        reusable = False
        try:
            request = _Attempt(phase, inputs, kwargs)
            child.send(msgspec.msgpack.encode(request))
            child.uses += 1
            outcome, timed_out, reusable = await self._watch(
                child, start, time.perf_counter(), timeout, memory_limit, log
            )
            if self._closing and not reusable and outcome.status == "failed":
                raise asyncio.CancelledError  # killed by close(): no outcome to report
            return outcome, timed_out
        finally:
            self._busy.discard(child)
            self._release(child, reusable)

    def warm(self, pipelines: Iterable[Pipeline]) -> None:
        """Start a child, in the background, for each of ``pipelines`` that has isolated
        phases (and a source to load it from), while the pool has room: the first
        attempt then finds one ready."""
        for pipe in pipelines:
            if pipe.source and any(spec.isolated for spec in pipe.phases.values()):
                self._start_ahead(self.key(pipe))

    def retire(self, pipelines: Iterable[Pipeline]) -> None:
        """Keep children of ``pipelines``' current code only: idle children holding other
        code end now, busy ones when their attempt is done (after a reload)."""
        self._current = {self.key(p) for p in pipelines}
        for child in [c for c in self._idle if c.key not in self._current]:
            self._idle.remove(child)
            self._end(child, kill=False)

    async def close(self) -> None:
        """End every child: idle ones cleanly (stdin closed), busy ones killed."""
        self._closing = True
        for task in self._ahead_tasks:  # a child still loading is killed, not waited for
            task.cancel()
        for child in self._idle:
            self._end(child, kill=False)
        for child in self._busy:
            self.killed += 1
            self._end(child, kill=True)
        self._idle.clear()
        while self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    # -- children ---------------------------------------------------------------------

    def _take(self, key: Key) -> _Child | None:
        """The most recently used idle child of ``key`` that is still alive."""
        for child in reversed(self._idle):
            if child.key == key:
                self._idle.remove(child)
                if child.proc.returncode is None:
                    return child
                self._end(child, kill=True)
        return None

    async def _spawn(self, key: Key, start: float) -> _Child | Outcome:
        """A new child that loaded ``key``'s code, or the failed outcome of an attempt that
        could not get one (as a child started per attempt words it). Makes room first by ending
        the least recently used idle child when the pool is full."""
        while self._idle and len(self._idle) + len(self._busy) >= self.size:
            self._end(self._idle.pop(0), kill=False)
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sisas.services.isolation_pool",
                str(write_fd),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                env=child_env(),
            )
        finally:
            os.close(write_fd)
        self.spawned += 1
        loop = asyncio.get_running_loop()
        transport, answers = await loop.connect_read_pipe(
            _Answers, os.fdopen(read_fd, "rb", buffering=0)
        )
        child = _Child(key, proc, answers, transport)
        try:
            child.send(msgspec.msgpack.encode(_Load(source=key[0], pipeline=key[1])))
            ready = await self._ready(child, start)
        except BaseException:
            await child.end(kill=True)
            raise
        if isinstance(ready, Outcome):
            await child.end(kill=True)
            return ready
        return child

    async def _ready(self, child: _Child, start: float) -> Outcome | None:
        """Wait for the child to load the pipeline; a failed outcome when it exits first
        or takes longer than :data:`STARTUP_LIMIT`."""
        try:
            data = await asyncio.wait_for(
                child.answers.frames.get(), max(0.0, start + STARTUP_LIMIT - time.perf_counter())
            )
        except TimeoutError:
            message = f"the phase's process did not load the pipeline within {STARTUP_LIMIT:.0f}s"
            return failed("HardFailure", message, start, True)
        if not data.startswith(_READY):
            code = await child.exit_code()
            message = f"the phase's process exited with code {code} without a result"
            return failed("HardFailure", message, start, True)
        child.fingerprint = data[1:].decode()
        child.baseline = rss(child.pid)
        if child.fingerprint != child.key[2]:
            log.warning(
                "%s changed on disk since this worker loaded %s: its isolated phases run "
                "the file's code (fingerprint %s), not the loaded one (%s); restart the "
                "worker or run it with --reload",
                child.key[0],
                child.key[1],
                child.fingerprint[:19],
                child.key[2][:19],
            )
        return None

    async def _watch(
        self,
        child: _Child,
        start: float,
        sent: float,
        timeout: float | None,
        memory_limit: int | None,
        log: AttemptLog | None = None,
    ) -> tuple[Outcome, bool, bool]:
        """The attempt's outcome, whether it timed out and whether the child may serve
        another; the child is killed past its timeout or memory limit. The lines it
        logs meanwhile go to ``log``."""
        frames = child.answers.frames
        deadline: float | None = None
        while True:
            now = time.perf_counter()
            if deadline is None:
                wait: float | None = max(0.0, sent + STARTUP_LIMIT - now)
            else:
                wait = max(0.0, deadline - now) if timeout else None
            if memory_limit is not None:
                wait = 0.02 if wait is None else min(wait, 0.02)
            try:
                data = await asyncio.wait_for(frames.get(), wait)
            except TimeoutError:
                data = None
            except asyncio.CancelledError:
                self._kill(child)  # the run was cancelled (or the worker is stopping)
                raise
            if data == _STARTED:
                deadline = time.perf_counter() + timeout if timeout else float("inf")
                continue
            if data is not None and data.startswith(_LOG):
                if log is not None:
                    log.add_line(data[1:].decode(errors="replace"))
                continue
            if data is not None and data.startswith(_OUTCOME):
                outcome = msgspec.msgpack.decode(memoryview(data)[1:], type=Outcome)
                return outcome, False, True
            if data == b"":  # the answers pipe closed without an outcome
                code = await child.exit_code()
                message = f"the phase's process exited with code {code} without a result"
                return failed("HardFailure", message, start, True), False, False
            now = time.perf_counter()
            if deadline is None and now > sent + STARTUP_LIMIT:
                self._kill(child)
                message = (
                    f"the phase's process did not start the attempt within {STARTUP_LIMIT:.0f}s"
                )
                return failed("HardFailure", message, start, True), False, False
            if deadline is not None and now > deadline:
                self._kill(child)
                message = f"killed after its timeout of {timeout}s"
                return failed("Timeout", message, start, True), True, False
            if memory_limit is not None and rss(child.pid) > memory_limit:
                self._kill(child)
                message = f"killed when it used more than its memory limit of {memory_limit} bytes"
                return failed("ResourceExhausted", message, start, False), False, False

    def _kill(self, child: _Child) -> None:
        if child.proc.returncode is None:
            child.proc.kill()
            self.killed += 1

    def _release(self, child: _Child, reusable: bool) -> None:
        """Put the child back to serve the next attempt, or end it (and start its
        replacement when it was killed and its code is still wanted)."""
        wanted = not self._closing and (self._current is None or child.key in self._current)
        healthy = (
            reusable
            and child.proc.returncode is None
            and child.uses < MAX_USES
            and rss(child.pid) <= child.baseline + GROWTH_LIMIT
        )
        full = len(self._idle) + len(self._busy) >= self.size
        if wanted and healthy and not (full and child.uses == 0):
            self._idle.append(child)  # (a child started ahead never evicts a used one)
            while len(self._idle) + len(self._busy) > self.size:
                self._end(self._idle.pop(0), kill=False)
            return
        self._end(child, kill=not reusable)
        if wanted and not reusable:
            self._start_ahead(child.key)  # its replacement

    def _start_ahead(self, key: Key) -> None:
        """Start a child for ``key`` in the background when the pool has room for it."""
        starting = sum(self._starting.values())
        if self._closing or len(self._idle) + len(self._busy) + starting >= self.size:
            return
        self._starting[key] = self._starting.get(key, 0) + 1
        task = self._track(self._ahead(key))
        self._ahead_tasks.add(task)
        task.add_done_callback(self._ahead_tasks.discard)

    async def _ahead(self, key: Key) -> None:
        try:
            spawned = await self._spawn(key, time.perf_counter())
            if isinstance(spawned, Outcome):
                assert spawned.error is not None
                log.warning("could not start a child for %s: %s", key[1], spawned.error.message)
            else:
                self._release(spawned, True)
        finally:
            self._starting[key] -= 1
            if not self._starting[key]:
                del self._starting[key]
            async with self._changed:  # whoever waits for it takes it, or starts one
                self._changed.notify_all()

    def _end(self, child: _Child, *, kill: bool) -> None:
        self._track(child.end(kill=kill))

    def _track(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        return task


if __name__ == "__main__":
    _child(int(sys.argv[1]))
