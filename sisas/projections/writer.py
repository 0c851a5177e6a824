"""The projector's writer thread: the fold and the DuckDB writes, off the event loop.

The event loop reads the log and hands each record to :meth:`ProjectionWriter.put`; one
dedicated thread takes everything queued (up to ``max_batch`` records) and ``apply``s it
as one batch: fold it and write its rows and the checkpoint in one DuckDB transaction.
A batch goes when it is full, ``linger`` seconds after its first record was queued, or
at once when someone waits to read (:meth:`hurry`); while it is written the next one
queues. So batches grow with the load, and a transaction's fixed cost (a dozen
statements and a commit) is shared by more signals the busier the log. DuckDB releases
the GIL while it works, and the loop holds it only to read, decode and enqueue::

    event loop:   log -> decode -> put ──┐  (waits while ``capacity`` records are queued)
                                         ▼
    writer thread:        take all queued (≤ max_batch) -> fold -> write + checkpoint -> commit

Guarantees:

- **Order.** Records are applied in the order they were put, each batch after the last
  committed one. :meth:`call` runs a function in the thread between two batches (a
  query, a digest), before the records still queued; ``ordered=True`` runs it after them.
- **Back-pressure.** At most ``capacity`` records wait (a put of one more waits, on the
  loop and without blocking it, until the thread takes a batch): nothing is dropped,
  memory stays bounded, and a reader outpacing the writer slows to its pace.
- **Errors.** An exception from ``apply`` ends the *epoch* it happened in: the records
  queued after it are dropped (the feed reads them again from the checkpoint),
  :attr:`epoch` moves on, and every :meth:`put` and :meth:`failed` of the old epoch
  raises the exception. The thread goes on; a new feed starts in the new epoch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sisas.errors import ProjectionError
from sisas.signals.records import LogRecord, StoredSignal

__all__ = ["ProjectionWriter"]

T = TypeVar("T")


@dataclass
class _Job(Generic[T]):
    fn: Callable[[], T]
    done: asyncio.Future[T] = field(repr=False)


class ProjectionWriter:
    """One thread that ``apply``s batches of records put from the event loop.

    Create it on the loop it serves (it answers there); :meth:`close` it before closing
    anything ``apply`` uses.
    """

    def __init__(
        self,
        apply: Callable[[list[LogRecord]], None],
        *,
        max_batch: int,
        capacity: int,
        linger: float = 0.0,
        on_change: Callable[[], None] = lambda: None,
        name: str = "sisas-projection-writer",
    ) -> None:
        """``apply`` runs in the thread; ``on_change`` on the loop after each batch
        applied (or failed). ``linger``: how long the first record queued waits for
        others before the thread takes a batch that is not full (see :meth:`hurry`)."""
        if max_batch < 1 or capacity < 1:
            raise ValueError("max_batch and capacity must be at least 1")
        self._apply = apply
        self.max_batch = max_batch
        self.capacity = capacity
        self.linger = linger
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._queue: collections.deque[LogRecord | _Job[Any]] = collections.deque()
        self._queued = 0  # records in _queue
        self._ordered = 0  # ordered jobs in _queue: the records before them go now
        self._due = 0.0  # when the queued records go, full or not
        self._hurry = False
        self._urgent: collections.deque[_Job[Any]] = collections.deque()
        self._room: asyncio.Future[None] | None = None
        self._changed: asyncio.Future[None] | None = None
        self._closing = False
        self._epoch = 0
        self._failure: BaseException | None = None
        self._stopped: asyncio.Future[None] = self._loop.create_future()
        self.batches = 0
        """Batches applied (or failed) so far."""
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current epoch: a feed puts with the epoch it started in."""
        return self._epoch

    @property
    def queued(self) -> int:
        """Records waiting for the thread."""
        return self._queued

    async def put(self, record: LogRecord, epoch: int) -> None:
        """Queue ``record``; wait while ``capacity`` records are queued (see :meth:`put_many`)."""
        await self.put_many([record], epoch)

    async def put_many(self, records: list[LogRecord], epoch: int) -> None:
        """Queue ``records`` (the records of one log message: a commit's signals) at once;
        wait while ``capacity`` records are queued. A batch never ends inside a message,
        so a commit is folded, and checkpointed, whole.

        Raises the error that ended ``epoch`` if it has ended, and
        :class:`ProjectionError` if the writer is closed.
        """
        while True:
            with self._cond:
                self._check(epoch)
                if self._queued < self.capacity:
                    was = self._queued
                    self._queue.extend(records)
                    self._queued += len(records)
                    if was == 0:
                        self._due = time.monotonic() + self.linger
                        self._cond.notify()
                    elif was < self.max_batch <= self._queued:
                        self._cond.notify()
                    return
                if self._room is None or self._room.done():
                    self._room = self._loop.create_future()
                room = self._room
            await asyncio.shield(room)

    async def call(self, fn: Callable[[], T], *, ordered: bool = False) -> T:
        """Run ``fn`` in the thread between two batches and return what it returns (or
        raise what it raises). ``ordered``: after the records queued now, not before."""
        done: asyncio.Future[T] = self._loop.create_future()
        job = _Job(fn, done)
        with self._cond:
            if self._closing:
                raise ProjectionError("the projection writer is closed")
            if ordered:
                self._queue.append(job)
                self._ordered += 1
            else:
                self._urgent.append(job)
            self._cond.notify()
        return await done

    def hurry(self) -> None:
        """Take the records queued now (and, if none, the next one) without waiting for
        ``linger``: someone waits to read them."""
        with self._cond:
            if not self._hurry:
                self._hurry = True
                self._cond.notify()

    async def failed(self, epoch: int) -> None:
        """Return never; raise the error that ended ``epoch`` as soon as it ends."""
        while True:
            with self._cond:
                self._check(epoch)
            await self.changed()

    async def changed(self) -> None:
        """Wait until the next batch is applied or fails."""
        if self._changed is None or self._changed.done():
            self._changed = self._loop.create_future()
        await asyncio.shield(self._changed)

    def _check(self, epoch: int) -> None:
        if self._closing:
            raise ProjectionError("the projection writer is closed")
        if epoch != self._epoch:
            failure = self._failure
            assert failure is not None  # an epoch ends with a failure
            raise failure

    async def close(self) -> None:
        """Stop the thread after the batch it is applying; drop what is queued. Jobs
        not yet run raise :class:`ProjectionError`. Returns once the thread has ended
        (if cancelled while waiting, waits for it blocking: nothing may outlive it)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        try:
            await asyncio.shield(self._stopped)
        except asyncio.CancelledError:
            self._thread.join()
            raise
        self._thread.join()

    def _wake(self) -> None:
        """On the loop: tell waiters something changed."""
        for fut in (self._room, self._changed):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._on_change()

    # -- the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while (work := self._take()) is not None:
                if isinstance(work, _Job):
                    self._run(work)
                else:
                    self._batch(work)
        finally:  # closed, or (a bug) died: either way nothing more is taken
            with self._cond:
                self._closing = True
                jobs = [*self._urgent, *(j for j in self._queue if isinstance(j, _Job))]
                self._urgent.clear()
                self._queue.clear()
                self._queued = 0
            for job in jobs:
                self._resolve(job, ProjectionError("the projection writer is closed"), None)
            self._soon(_finish, self._stopped, self._wake)

    def _take(self) -> _Job[Any] | list[LogRecord] | None:
        """The next job, or up to ``max_batch`` records in the order queued; None when
        closing. Taking records frees room for the loop."""
        with self._cond:
            while not (self._closing or self._urgent or self._ready()):
                wait = max(0.0, self._due - time.monotonic()) if self._queue else None
                self._cond.wait(wait)
            if self._closing:
                return None
            if self._urgent:
                return self._urgent.popleft()
            head = self._queue[0]
            if isinstance(head, _Job):
                self._queue.popleft()
                self._ordered -= 1
                return head
            self._hurry = False
            batch: list[LogRecord] = []
            while self._queue:
                item = self._queue[0]
                if isinstance(item, _Job):
                    break
                if len(batch) >= self.max_batch and _whole(batch[-1]):
                    break  # full, and not inside a commit (queued whole by put_many)
                batch.append(item)
                self._queue.popleft()
            self._queued -= len(batch)
            room, self._room = self._room, None
        if room is not None:  # the loop refills the queue while this batch is applied
            self._soon(_release, room)
        return batch

    def _ready(self) -> bool:
        """Whether the head of the queue goes now (called holding the lock)."""
        if not self._queue:
            return False
        return (
            self._queued >= self.max_batch
            or self._hurry
            or self._ordered > 0
            or isinstance(self._queue[0], _Job)
            or time.monotonic() >= self._due
        )

    def _batch(self, records: list[LogRecord]) -> None:
        try:
            self._apply(records)
        except Exception as exc:
            with self._cond:
                self._epoch += 1
                self._failure = exc
                kept = [j for j in self._queue if isinstance(j, _Job)]
                self._queue.clear()
                self._queue.extend(kept)
                self._queued = 0
                self._hurry = False
        self.batches += 1
        self._soon(self._wake)

    def _run(self, job: _Job[Any]) -> None:
        try:
            result = job.fn()
        except Exception as exc:
            self._resolve(job, exc, None)
        else:
            self._resolve(job, None, result)

    def _resolve(self, job: _Job[Any], exc: BaseException | None, result: object) -> None:
        self._soon(_settle, job.done, exc, result)

    def _soon(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self._loop.call_soon_threadsafe(fn, *args)


def _whole(record: LogRecord) -> bool:
    """Whether ``record`` ends its log message (a commit's last signal, or any other)."""
    return not isinstance(record, StoredSignal) or record.last_in_message


def _settle(fut: asyncio.Future[Any], exc: BaseException | None, result: object) -> None:
    if fut.done():  # the caller was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _release(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


def _finish(stopped: asyncio.Future[None], wake: Callable[[], None]) -> None:
    if not stopped.done():
        stopped.set_result(None)
    wake()
