"""The projector: folds the log into the DuckDB tables, in batches, from its checkpoint.

Each signal goes through :func:`sisas.handlers.state.evolve`, the orchestrator's own
fold, and the rows of the tables are read off the state it returns. A signal that does
not extend its run's chain (wrong ``seq`` or ``prev``), one holding a number its
column cannot store, a message that is not a signal and a hole in the stream are kept
in ``rejected`` with the stream sequence and the reason; nothing stops the projector.
A signal ``sisas replay verify`` would flag is not folded into what the tables show of
its run, and marks the run tampered (:mod:`sisas.projections.screen`).

Memory is bounded: the states of at most ``cache_runs`` runs stay in memory; the others
are read back from ``run_states`` when their next signal arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from sisas.errors import ProjectionError
from sisas.projections import rows
from sisas.projections.rows import Row, Tracked
from sisas.projections.screen import screen_corrupt, screen_signal
from sisas.projections.store import Batch, ProjectionStore
from sisas.signals.names import log_subject, parse_run_subject
from sisas.signals.records import CorruptMessage, LogGap, LogRecord, StoredSignal

__all__ = ["LogReader", "Projector", "RebuildReport"]

log = logging.getLogger(__name__)


class LogReader(Protocol):
    """What the projector needs of a log (both log adapters of ``sisas.bus`` have it)."""

    def follow(self, *, from_seq: int = 1, live: bool = False) -> AsyncIterator[LogRecord]: ...

    async def last_seq(self) -> int: ...


Progress = Callable[[int, int], None]
"""Called with (stream sequence applied, target sequence) after each batch."""


@dataclass(frozen=True)
class RebuildReport:
    before: str
    after: str
    stream_seq: int
    seconds: float

    @property
    def equal(self) -> bool:
        return self.before == self.after


class Projector:
    """Folds ``log`` into ``store``; one projector writes one store."""

    def __init__(
        self,
        log: LogReader,
        store: ProjectionStore,
        *,
        identity: str = "",
        batch_size: int = 5_000,
        linger: float = 0.05,
        cache_runs: int = 10_000,
    ) -> None:
        self.log = log
        self.store = store
        self.identity = identity
        self.batch_size = batch_size
        self.linger = linger
        self.cache_runs = cache_runs
        self._cache: OrderedDict[str, Tracked] = OrderedDict()
        self._lock = asyncio.Lock()
        self._applied = asyncio.Condition()
        self._bound = False
        self._inflight: dict[str, Tracked] = {}
        self._inflight_signals: list[Row] = []
        self._folding: list[Row] = []
        self._prefetched: dict[str, Tracked] = {}
        self.applied_seq = 0
        """The last stream sequence committed to the store."""
        self.folded_seq = 0
        """The last stream sequence folded (committed, or in a batch being written)."""

    # -- the fold ---------------------------------------------------------------------

    def _tracked(self, run_id: str, batch: Batch) -> Tracked | None:
        t = batch.states.get(run_id) or self._inflight.get(run_id)
        if t is not None:
            return t
        t = self._cache.get(run_id)
        if t is not None:
            self._cache.move_to_end(run_id)
            return t
        return self._prefetched.get(run_id)

    def _prefetch(self, records: list[LogRecord]) -> None:
        """Read the stored states of the batch's runs that are not in memory: one query
        per batch, not one per run."""
        wanted = {
            run_id
            for run_id in map(_run_of, records)
            if run_id and run_id not in self._cache and run_id not in self._inflight
        }
        self._prefetched = {
            run_id: rows.decode_screen(
                stored.state, stored.screen, stored.first_stream_seq, stored.last_stream_seq
            )
            for run_id, stored in self.store.load_runs(wanted).items()
        }

    def _remember(self, run_id: str, t: Tracked) -> None:
        self._cache[run_id] = t
        self._cache.move_to_end(run_id)
        while len(self._cache) > self.cache_runs:
            self._cache.popitem(last=False)

    def fold_batch(self, records: list[LogRecord]) -> Batch:
        """The rows of ``records`` (consecutive, from the checkpoint on). Pure but for
        the cache of run states it reads and updates."""
        batch = Batch(last_seq=self.folded_seq)
        self._prefetch(records)
        facts = batch.facts
        self._folding = facts["signals"]
        for record in records:
            if isinstance(record, StoredSignal):
                self._apply(record, batch)
                batch.last_seq = record.stream_seq
            elif isinstance(record, CorruptMessage):
                facts["rejected"].append(rows.rejected_row(record))
                self._corrupt(record, batch)
                batch.last_seq = record.stream_seq
            else:
                facts["rejected"].append(rows.rejected_row(record))
                batch.last_seq = max(batch.last_seq, record.last)
        for run_id in sorted(batch.states):
            t: Tracked = batch.states[run_id]
            batch.runs["runs"].append(rows.run_row(t))
            batch.runs["run_states"].append(
                (
                    run_id,
                    t.first_stream_seq,
                    t.last_stream_seq,
                    rows.encode_state(t.state),
                    rows.encode_screen(t),
                )
            )
            batch.runs["phases"].extend(rows.phase_rows(t.view))
        self._prefetched = {}
        self._folding = []
        self.folded_seq = batch.last_seq
        return batch

    def _apply(self, record: StoredSignal, batch: Batch) -> None:
        s, seq = record.signal, record.stream_seq
        t = self._tracked(s.run_id, batch)
        step = screen_signal(t, seq, s, self._hash_at)
        if step.tracked is not None and step.tracked is not t:
            batch.states[s.run_id] = step.tracked
        if step.rejected:
            subject = log_subject(s.pipeline, s.run_id, s.phase, s.kind)
            batch.facts["rejected"].append(
                rows.rejected_row(
                    CorruptMessage(stream_seq=seq, subject=subject, reason=step.rejected),
                    record.index,
                )
            )
            return
        batch.facts["signals"].append(rows.signal_row(seq, s))
        if not step.shown:  # a flagged signal's check or attempt is not shown as real
            return
        check = rows.check_row(seq, s)
        if check is not None:
            batch.facts["checks"].append(check)
        assert step.tracked is not None  # a signal that extends a chain has a run
        metric = rows.metric_row(seq, s, step.tracked.state)
        if metric is not None:
            batch.facts["metrics"].append(metric)

    def _corrupt(self, record: CorruptMessage, batch: Batch) -> None:
        """A message on a run's subjects that is not a valid signal flags the run."""
        run_id = _run_of(record)
        t = self._tracked(run_id, batch) if run_id else None
        if t is not None:
            flagged = screen_corrupt(t, record)
            if flagged is not t:
                batch.states[run_id] = flagged

    def _hash_at(self, run_id: str, seq: int) -> str | None:
        """The hash of ``run_id``'s folded signal ``seq``: in the batch being folded, the
        one being written, or the store. Asked at most once per run, when a signal
        behind its head arrives (a duplicate or a fork?)."""
        for folded in (self._folding, self._inflight_signals):
            for row in folded:
                if row[1] == run_id and row[3] == seq:
                    return str(row[9])
        return self.store.signal_hash(run_id, seq)

    def _write(self, batch: Batch) -> None:
        """Store ``batch`` (folded last) now, in this thread."""
        try:
            self.store.write(batch)
        except ProjectionError:
            self._forget()
            raise
        self._committed(batch)

    async def _write_in_thread(self, batch: Batch) -> None:
        """Store ``batch`` in a worker thread (DuckDB releases the GIL) while the next
        batch is folded; its states stay readable in ``_inflight`` until committed."""
        try:
            await asyncio.to_thread(self.store.write, batch)
        except ProjectionError:
            self._forget()
            raise
        self._inflight, self._inflight_signals = {}, []
        self._committed(batch)

    def _committed(self, batch: Batch) -> None:
        self.applied_seq = batch.last_seq
        for run_id, t in batch.states.items():
            self._remember(run_id, t)

    def _forget(self) -> None:
        """After a failed write: memory ran ahead of the rolled-back rows; drop it."""
        self._cache.clear()
        self._inflight, self._inflight_signals = {}, []
        self.folded_seq = self.applied_seq = self.store.checkpoint()

    async def _notify(self) -> None:
        async with self._applied:
            self._applied.notify_all()

    # -- driving it -------------------------------------------------------------------

    async def open(self) -> None:
        """Tie the store to this log and load the checkpoint."""
        if not self._bound:
            if self.identity and self.store.bind(self.identity):
                self._cache.clear()
            self._bound = True
        self.applied_seq = self.folded_seq = self.store.checkpoint()

    async def catch_up(self, *, progress: Progress | None = None) -> int:
        """Fold everything the log holds now; return the stream sequence reached.

        The lock is taken per batch, so queries are answered between batches.
        """
        async with self._lock:
            await self.open()
            target = await self.log.last_seq()
            if self.applied_seq > target:
                log.warning(
                    "projection is at stream sequence %d, the log ends at %d: rebuilding",
                    self.applied_seq,
                    target,
                )
                self._reset()
        return await self._fold_until(target, progress, locked=False)

    async def _fold_until(self, target: int, progress: Progress | None, *, locked: bool) -> int:
        """Fold from the checkpoint to ``target`` (``locked``: the caller holds the lock).

        Batch k+1 is folded while batch k is written in a thread; writes stay in order,
        each with its checkpoint, so a crash anywhere leaves a consistent store.
        """
        if progress:
            progress(self.applied_seq, target)
        if self.applied_seq >= target:
            return self.applied_seq
        writing: asyncio.Task[None] | None = None
        stream = self.log.follow(from_seq=self.applied_seq + 1, live=False)
        try:
            async for records in _batches(stream, self.batch_size, self.linger):
                fresh = [r for r in records if _start(r) <= target and _end(r) > self.folded_seq]
                if fresh:
                    batch = self.fold_batch(fresh)
                    if writing is not None:
                        await writing
                        await self._after_write(progress, target)
                    # before the next fold reads them
                    self._inflight, self._inflight_signals = batch.states, batch.facts["signals"]
                    writing = asyncio.create_task(self._write_locked(batch, locked))
                if self.folded_seq >= target or not fresh:
                    break
            if writing is not None:
                await writing
                writing = None
                await self._after_write(progress, target)
        finally:
            if writing is not None:  # cancelled or failed: let the write finish cleanly
                with contextlib.suppress(Exception):
                    await asyncio.shield(writing)
        return self.applied_seq

    async def _write_locked(self, batch: Batch, locked: bool) -> None:
        async with contextlib.nullcontext() if locked else self._lock:
            await self._write_in_thread(batch)

    async def _after_write(self, progress: Progress | None, target: int) -> None:
        if progress:
            progress(self.applied_seq, target)
        await self._notify()

    def _reset(self) -> None:
        self.store.reset()
        self._cache.clear()
        self.applied_seq = self.folded_seq = 0

    async def rebuild(self, *, progress: Progress | None = None) -> RebuildReport:
        """Catch up, digest, drop every table, fold the log again to the same sequence,
        digest again. Queries wait until it is done."""
        await self.catch_up()
        async with self._lock:
            start = time.perf_counter()
            target = await self.log.last_seq()
            await self._fold_until(target, None, locked=True)
            before = self.store.digest()
            self._reset()
            await self._fold_until(target, progress, locked=True)
            after = self.store.digest()
            return RebuildReport(
                before=before,
                after=after,
                stream_seq=self.applied_seq,
                seconds=time.perf_counter() - start,
            )

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[ProjectionStore]:
        """The store, between batches and never during a rebuild."""
        async with self._lock:
            yield self.store

    async def run(self, stop: asyncio.Event) -> None:
        """Catch up, then follow the log live until ``stop`` is set.

        A failed write (disk full, file damaged) is logged and retried from the
        checkpoint after a pause; nothing is skipped.
        """
        while not stop.is_set():
            try:
                await self._follow(stop)
            except ProjectionError as exc:
                log.error("%s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _follow(self, stop: asyncio.Event) -> None:
        await self.catch_up()
        stream = self.log.follow(from_seq=self.applied_seq + 1, live=True)
        batches = _batches(stream, self.batch_size, self.linger)
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(anext(batches))
                done, _ = await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    return
                records = nxt.result()
                async with self._lock:
                    records = [r for r in records if _end(r) > self.folded_seq]
                    if records:
                        self._write(self.fold_batch(records))
                await self._notify()
        finally:
            stopping.cancel()
            await batches.aclose()

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until the projection holds stream sequence ``seq``; False on timeout."""
        async with self._applied:
            try:
                await asyncio.wait_for(
                    self._applied.wait_for(lambda: self.applied_seq >= seq), timeout
                )
            except TimeoutError:
                return False
        return True


def _run_of(record: LogRecord) -> str:
    """The run a record belongs to ("" for a hole in the stream or a foreign subject)."""
    if isinstance(record, StoredSignal):
        return record.signal.run_id
    if isinstance(record, CorruptMessage):
        parsed = parse_run_subject(record.subject)
        return parsed[1] if parsed else ""
    return ""


def _start(record: LogRecord) -> int:
    return record.first if isinstance(record, LogGap) else record.stream_seq


def _end(record: LogRecord) -> int:
    return record.last if isinstance(record, LogGap) else record.stream_seq


async def _batches(
    records: AsyncIterator[LogRecord], size: int, linger: float
) -> AsyncGenerator[list[LogRecord], None]:
    """Group ``records`` into lists of at most ``size``: a list is yielded when full, or
    ``linger`` seconds after its first record when the log goes quiet. Reading runs
    ahead by at most two lists while the consumer folds."""
    ready: collections.deque[list[LogRecord]] = collections.deque()
    current: list[LogRecord] = []
    wake, room = asyncio.Event(), asyncio.Event()
    room.set()
    finished: list[BaseException | None] = []

    async def pump() -> None:
        nonlocal current
        try:
            async for r in records:
                current.append(r)
                # A list ends after a message's last signal: a commit is folded, and
                # checkpointed, whole.
                whole = not isinstance(r, StoredSignal) or r.last_in_message
                if len(current) >= size and whole:
                    ready.append(current)
                    current = []
                    wake.set()
                    if len(ready) >= 2:
                        room.clear()
                        await room.wait()
                elif len(current) == 1:
                    wake.set()
        except Exception as exc:  # handed to the consumer after the records before it
            finished.append(exc)
        else:
            finished.append(None)
        wake.set()

    reader = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            if not ready and not current:
                if finished:
                    break
                wake.clear()
                await wake.wait()
                continue
            if not ready and not finished:  # a partial list: give it ``linger`` to fill
                deadline = loop.time() + linger
                while not ready and not finished and loop.time() < deadline:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), deadline - loop.time())
            if ready:
                batch = ready.popleft()
                room.set()
            else:
                batch, current = current, []
            if batch:
                yield batch
        if finished and finished[0] is not None:
            raise finished[0]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
