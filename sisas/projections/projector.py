"""The projector: folds the log into the DuckDB tables, in batches, from its checkpoint.

Each signal goes through :func:`sisas.handlers.state.evolve`, the orchestrator's own
fold, and the rows of the tables are read off the state it returns. A signal that does
not extend its run's chain (wrong ``seq`` or ``prev``), one holding a number its
column cannot store, a message that is not a signal and a hole in the stream are kept
in ``rejected`` with the stream sequence and the reason; nothing stops the projector.
A signal ``sisas replay verify`` would flag is not folded into what the tables show of
its run, and marks the run tampered (:mod:`sisas.projections.screen`).

The fold and the writes run in a writer thread (:mod:`sisas.projections.writer`), fed
record by record from the event loop, which only reads and decodes the log: a projector
in the same process as an orchestrator and a worker does not hold up their event loop.
Everything that touches the store while it runs (queries, digests, resets) runs in that
thread too, between two batches.

Memory is bounded: the states of at most ``cache_runs`` runs stay in memory; the others
are read back from ``run_states`` when their next signal arrives; at most twice
``batch_size`` records wait for the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sisas.errors import ProjectionError
from sisas.faults import failpoint
from sisas.projections import rows
from sisas.projections.rows import Row, Tracked
from sisas.projections.screen import screen_corrupt, screen_signal
from sisas.projections.store import Batch, ProjectionStore
from sisas.projections.writer import ProjectionWriter
from sisas.signals.names import log_subject, parse_run_subject
from sisas.signals.records import CorruptMessage, LogGap, LogRecord, StoredSignal

__all__ = ["LogReader", "Projector", "RebuildReport", "SharedFold"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LogReader(Protocol):
    """What the projector needs of a log (both log adapters of ``sisas.bus`` have it)."""

    def follow(self, *, from_seq: int = 1, live: bool = False) -> AsyncIterator[LogRecord]: ...

    async def last_seq(self) -> int: ...


SharedFold = Callable[[int, int, int], Iterable[Batch]]
"""``(first, target, jobs)`` -> the batches of the log from stream sequence ``first`` to
``target`` folded by ``jobs`` processes, in order (:mod:`sisas.services.rebuild`)."""

Progress = Callable[[int, int], None]
"""Called (on the event loop) with (stream sequence applied, target sequence) after
each batch."""


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
    """Folds ``log`` into ``store``; one projector writes one store.

    ``batch_size`` caps a batch (one transaction). A batch that is not full goes
    ``linger`` seconds after its first record was read, at once when someone waits for
    a position (:meth:`wait_applied`, a query) or catching up reaches its end.
    """

    def __init__(
        self,
        log: LogReader,
        store: ProjectionStore,
        *,
        identity: str = "",
        batch_size: int = 5_000,
        linger: float = 0.25,
        cache_runs: int = 2_000,
        shared_fold: SharedFold | None = None,
    ) -> None:
        self.log = log
        self.store = store
        self.identity = identity
        self.batch_size = batch_size
        self.linger = linger
        self.cache_runs = cache_runs
        self.shared_fold = shared_fold
        self._cache: OrderedDict[str, Tracked] = OrderedDict()
        self._lock = asyncio.Lock()
        self._bound = False
        self._folding: list[Row] = []
        self._prefetched: dict[str, Tracked] = {}
        self._writer: ProjectionWriter | None = None
        self._writer_users = 0
        self._progress: tuple[Progress, int] | None = None
        self._change: asyncio.Future[None] | None = None
        self.applied_seq = 0
        """The last stream sequence committed to the store."""
        self.folded_seq = 0
        """The last stream sequence folded (in the writer thread, ahead of
        :attr:`applied_seq` while a batch is written)."""

    # -- the fold ---------------------------------------------------------------------

    def _tracked(self, run_id: str, batch: Batch) -> Tracked | None:
        t = batch.states.get(run_id)
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
            run_id for run_id in map(_run_of, records) if run_id and run_id not in self._cache
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
            self._dropped(*self._cache.popitem(last=False))

    def _dropped(self, run_id: str, t: Tracked) -> None:
        """``run_id`` left the cache (its state is in the store, read back when it moves)."""

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
            if t is None:  # neither folded nor stored before: no rows of it to replace
                batch.fresh.add(s.run_id)
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
        """The hash of ``run_id``'s folded signal ``seq``: in the batch being folded or
        the store. Asked at most once per run, when a signal behind its head arrives (a
        duplicate or a fork?)."""
        for row in self._folding:
            if row[1] == run_id and row[3] == seq:
                return str(row[9])
        return self.store.signal_hash(run_id, seq)

    def apply(self, records: list[LogRecord]) -> None:
        """Fold ``records`` and store them with the checkpoint in one transaction (in
        the writer thread). Records the projection already holds are skipped; a record
        that would leave a hole behind the checkpoint raises :class:`ProjectionError`.
        """
        fresh = [r for r in records if _end(r) > self.folded_seq]
        if not fresh:
            return
        if _start(fresh[0]) > self.folded_seq + 1:
            raise ProjectionError(
                f"the projector was handed stream sequence {_start(fresh[0])} after "
                f"{self.folded_seq}; it reads the log again from its checkpoint"
            )
        try:
            batch = self.fold_batch(fresh)
            self.store.write(batch)
        except Exception:
            self._forget()
            raise
        self.applied_seq = batch.last_seq
        for run_id, t in batch.states.items():
            self._remember(run_id, t)
        failpoint("projector.between_batches")

    def _forget(self) -> None:
        """After a failed batch: memory ran ahead of the rolled-back rows; drop it."""
        self._cache.clear()
        self._prefetched, self._folding = {}, []
        self.folded_seq = self.applied_seq = self.store.checkpoint()

    # -- the writer thread --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[ProjectionWriter]:
        """The writer thread, started for the outermost user and closed after it."""
        if self._writer is None:
            self._writer = ProjectionWriter(
                self.apply,
                max_batch=self.batch_size,
                capacity=max(2 * self.batch_size, 64),
                linger=self.linger,
                on_change=self._changed,
            )
        writer = self._writer
        self._writer_users += 1
        try:
            yield writer
        finally:
            self._writer_users -= 1
            if self._writer_users == 0:
                self._writer = None
                await writer.close()

    async def _exec(self, fn: Callable[[], T], *, ordered: bool = False) -> T:
        """``fn()`` where the store is used: in the writer thread between two batches
        while it runs (``ordered``: after the records queued), else here."""
        if self._writer is not None:
            return await self._writer.call(fn, ordered=ordered)
        return fn()

    def _changed(self) -> None:
        """On the event loop, after each batch the writer applied (or failed)."""
        if self._change is not None and not self._change.done():
            self._change.set_result(None)
        self._change = None
        if self._progress is not None:
            report, target = self._progress
            report(self.applied_seq, target)

    # -- driving it -------------------------------------------------------------------

    async def open(self) -> None:
        """Tie the store to this log and load the checkpoint."""
        await self._exec(self._open)

    def _open(self) -> None:
        if not self._bound:
            if self.identity and self.store.bind(self.identity):
                self._cache.clear()
            self._bound = True
        self.applied_seq = self.folded_seq = self.store.checkpoint()

    async def catch_up(self, *, progress: Progress | None = None, jobs: int = 1) -> int:
        """Fold everything the log holds now; return the stream sequence reached.

        Queries are answered between batches (they run in the writer thread too).
        ``jobs`` > 1 (with a :data:`SharedFold`), from an empty store only: that many
        processes fold shares of the runs while this one writes.
        """
        async with self._writing():
            async with self._lock:
                await self.open()
                target = await self.log.last_seq()
                if self.applied_seq > target:
                    log.warning(
                        "projection is at stream sequence %d, the log ends at %d: rebuilding",
                        self.applied_seq,
                        target,
                    )
                    await self._exec(self._reset, ordered=True)
                if jobs > 1 and self.shared_fold is not None and self.applied_seq == 0 < target:
                    await self._fold_shared(target, jobs, progress)
            return await self._fold_until(target, progress, locked=False)

    async def _fold_until(self, target: int, progress: Progress | None, *, locked: bool) -> int:
        """Feed the writer from the checkpoint to ``target`` and wait until it has
        applied them (``locked``: the caller holds the lock; else it is taken per put,
        so a rebuild never interleaves with this feed)."""
        writer = self._writer
        assert writer is not None
        if progress:
            progress(self.applied_seq, target)
        if self.applied_seq >= target:
            return self.applied_seq
        epoch, fed = writer.epoch, self.applied_seq
        self._progress = (progress, target) if progress else None
        try:
            stream = self.log.follow(from_seq=self.applied_seq + 1, live=False)
            async with _closing(stream):
                async for group in _messages(stream):
                    if _start(group[0]) > target:
                        break
                    async with contextlib.nullcontext() if locked else self._lock:
                        await writer.put_many(group, epoch)
                    fed = _end(group[-1])
                    if fed >= target:
                        break
            writer.hurry()  # the tail of the catch-up: no reason to linger
            while self.applied_seq < min(fed, target):
                waiting = asyncio.ensure_future(writer.changed())
                failing = asyncio.ensure_future(writer.failed(epoch))
                await _first(waiting, failing)
        finally:
            self._progress = None
        return self.applied_seq

    def _reset(self) -> None:
        self.store.reset()
        self._cache.clear()
        self.applied_seq = self.folded_seq = 0

    async def rebuild(self, *, progress: Progress | None = None, jobs: int = 1) -> RebuildReport:
        """Catch up, digest, drop every table, fold the log again to the same sequence,
        digest again. Queries wait until it is done.

        ``jobs`` > 1 (with a :data:`SharedFold`): the log is folded again by that many
        processes, each folding a share of the runs, and written here batch by batch,
        each with its checkpoint; the tables are the same as with one."""
        async with self._writing():
            await self.catch_up()
            async with self._lock:
                start = time.perf_counter()
                target = await self.log.last_seq()
                await self._fold_until(target, None, locked=True)
                before = await self._exec(self.store.digest, ordered=True)
                await self._exec(self._reset, ordered=True)
                if jobs > 1 and self.shared_fold is not None:
                    await self._fold_shared(target, jobs, progress)
                else:
                    await self._fold_until(target, progress, locked=True)
                after = await self._exec(self.store.digest, ordered=True)
                return RebuildReport(
                    before=before,
                    after=after,
                    stream_seq=self.applied_seq,
                    seconds=time.perf_counter() - start,
                )

    async def _fold_shared(self, target: int, jobs: int, progress: Progress | None) -> None:
        """Fold to ``target`` in ``jobs`` processes, writing here (in the writer thread)."""
        shared = self.shared_fold
        assert shared is not None
        loop = asyncio.get_running_loop()

        def write_all() -> None:
            for batch in shared(self.applied_seq + 1, target, jobs):
                self.store.write(batch)
                self.applied_seq = self.folded_seq = batch.last_seq
                if progress is not None:
                    loop.call_soon_threadsafe(progress, batch.last_seq, target)

        try:
            await self._exec(write_all, ordered=True)
        finally:
            self._cache.clear()  # the runs were folded elsewhere: read back when they move
            self.applied_seq = self.folded_seq = await self._exec(self.store.checkpoint)

    async def read(self, fn: Callable[[ProjectionStore], T]) -> T:
        """``fn(store)`` between two batches, never during a rebuild: in the writer
        thread while the projector runs (the event loop goes on), else here.
        :attr:`applied_seq` is what the store holds while ``fn`` runs."""
        async with self._lock:
            return await self._exec(lambda: fn(self.store))

    async def run(self, stop: asyncio.Event) -> None:
        """Catch up, then follow the log live until ``stop`` is set, folding and
        writing in the writer thread.

        A failed write (disk full, file damaged) is logged and retried from the
        checkpoint after a pause; nothing is skipped.
        """
        async with self._writing():
            while not stop.is_set():
                try:
                    await self._follow(stop)
                except ProjectionError as exc:
                    log.error("%s", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _follow(self, stop: asyncio.Event) -> None:
        """Feed the writer from the live log until ``stop``; raise what ends the feed
        (a failed batch, a failed read)."""
        await self.catch_up()
        writer = self._writer
        assert writer is not None
        epoch = writer.epoch
        stream = self.log.follow(from_seq=self.applied_seq + 1, live=True)
        async with _closing(stream):
            await _first(
                asyncio.ensure_future(self._feed(stream, writer, epoch)),
                asyncio.ensure_future(writer.failed(epoch)),
                asyncio.ensure_future(stop.wait()),
            )

    async def _feed(
        self, stream: AsyncIterator[LogRecord], writer: ProjectionWriter, epoch: int
    ) -> None:
        async for group in _messages(stream):
            async with self._lock:  # not while a rebuild refolds
                await writer.put_many(group, epoch)

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until the projection holds stream sequence ``seq``; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.applied_seq < seq:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._writer is not None:
                self._writer.hurry()
            if self._change is None:
                self._change = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._change), left)
        return True


async def _first(*tasks: asyncio.Future[Any]) -> None:
    """Wait for the first of ``tasks`` to end, cancel the others, raise its error."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[LogRecord]) -> AsyncIterator[None]:
    """Close ``stream`` (an async generator: its consumer) on leaving."""
    try:
        yield
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _run_of(record: LogRecord) -> str:
    """The run a record belongs to ("" for a hole in the stream or a foreign subject)."""
    if isinstance(record, StoredSignal):
        return record.signal.run_id
    if isinstance(record, CorruptMessage):
        parsed = parse_run_subject(record.subject)
        return parsed[1] if parsed else ""
    return ""


async def _messages(records: AsyncIterator[LogRecord]) -> AsyncIterator[list[LogRecord]]:
    """``records`` grouped by log message: a commit's signals together, anything else alone."""
    group: list[LogRecord] = []
    async for record in records:
        group.append(record)
        if not isinstance(record, StoredSignal) or record.last_in_message:
            yield group
            group = []


def _start(record: LogRecord) -> int:
    return record.first if isinstance(record, LogGap) else record.stream_seq


def _end(record: LogRecord) -> int:
    return record.last if isinstance(record, LogGap) else record.stream_seq
