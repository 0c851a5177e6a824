"""The runs the dashboard's pages look at, each kept current from the live stream.

:class:`RunDetails` keeps the :class:`~sisas.dashboard.index.RunIndex` of the runs lately
asked for. The hub hands it every record it reads (:meth:`RunDetails.feed`), so a page
load of a live run takes in the signals since the last load, O(new signals), instead of
reading and folding the whole run again; the log's last record of the run says whether
an index is current, and one that cannot be continued is built again from the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from sisas.bus.runtime import Bus
from sisas.dashboard.detail import RunDetail
from sisas.dashboard.index import RunIndex
from sisas.signals import CorruptMessage, StoredSignal
from sisas.signals.records import LogRecord

__all__ = ["TAIL", "RunDetails"]

log = logging.getLogger(__name__)

T = TypeVar("T")
TAIL = 5_000
"""Messages of the log a page load reads past the hub at most, to bring an index up to
date; past that it is built again from the run's own messages."""


class _Kept:
    """A run's index, and the records the hub read for it since (not yet taken)."""

    __slots__ = ("index", "pending", "stale")

    def __init__(self) -> None:
        self.index: RunIndex | None = None
        self.pending: list[StoredSignal | CorruptMessage] = []
        self.stale = False


class RunDetails:
    """The indexes of the runs lately asked for (:class:`RunIndex`), kept current from
    the hub's records of them: a page load of a live run takes in the signals since the
    last load, O(new signals), instead of reading and folding the whole run again. An
    index that cannot be continued (a record out of order, a gap, a message that is not
    a signal) is built again from the log; the log's last record of the run says
    whether an index is current."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._kept: dict[str, _Kept] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.built = 0
        """Indexes built from a read of the whole run (the first time, or one that
        could not be continued)."""
        self.continued = 0
        """Times an index was brought up to date from the hub's records alone."""

    def feed(self, record: LogRecord) -> None:
        """The hub read ``record``: the index of its run, if kept, takes it at its next
        use. O(1): called on the event loop for every record of the log."""
        if isinstance(record, StoredSignal):
            kept = self._kept.get(record.signal.run_id)
            if kept is not None:
                kept.pending.append(record)
        else:  # whose run is unknown: every index is built again when next asked for
            for kept in self._kept.values():
                kept.stale = True

    async def use(self, bus: Bus, run_id: str, view: Callable[[RunDetail], T]) -> T | None:
        """``view`` of the run's current detail, computed off the event loop (the loop
        may be the one that orchestrates: `sisas up`) while no update of the run runs;
        None when the log holds no run ``run_id``. Raises SisasError when the log cannot
        be read."""
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:  # one update or view of a run at a time, however many ask
            detail = await self._current(bus, run_id)
            return None if detail is None else await asyncio.to_thread(view, detail)

    async def _current(self, bus: Bus, run_id: str) -> RunDetail | None:
        last = await bus.log.last_of_run(run_id)
        if last is None:
            return None
        kept = self._kept.get(run_id)
        if kept is not None and kept.index is not None and not kept.stale:
            index, pending = kept.index, kept.pending
            kept.pending = []
            if await asyncio.to_thread(index.catch_up, pending):
                if not index.at(last):  # the log is ahead of the hub: read what it lacks
                    tail = await self._tail(bus, run_id, index.position[0], last.stream_seq)
                    if tail is not None:
                        await asyncio.to_thread(index.catch_up, tail)
                if index.at(last):
                    self.continued += 1
                    return index.detail
            log.debug("run %s: index built again at stream seq %d", run_id, last.stream_seq)
        kept = self._kept[run_id] = _Kept()  # collects what the hub reads from now on
        self._evict()
        records = await bus.log.read_run(run_id)  # holds every record read before
        if not any(isinstance(r, StoredSignal) for r in records):
            del self._kept[run_id]
            return None
        index = await asyncio.to_thread(RunIndex.of, records)
        self.built += 1
        kept.index = index
        pending, kept.pending = kept.pending, []
        await asyncio.to_thread(index.catch_up, pending)  # a gap: built again next time
        return index.detail

    @staticmethod
    async def _tail(bus: Bus, run_id: str, from_seq: int, to_seq: int) -> list[StoredSignal] | None:
        """The run's records from stream seq ``from_seq`` to ``to_seq`` (the log's, of
        every run, read from there: the few the hub has not delivered yet); None when
        there are more than :data:`TAIL` messages to read, or a gap or a corrupt message
        among them (the index is then built again)."""
        if to_seq - from_seq > TAIL:
            return None
        out: list[StoredSignal] = []
        records = bus.log.follow(from_seq=from_seq)
        try:
            async for rec in records:
                if not isinstance(rec, StoredSignal):
                    return None
                if rec.signal.run_id == run_id:
                    out.append(rec)
                if rec.stream_seq >= to_seq and rec.index == rec.of - 1:
                    break  # the last signal of the run's last message
        finally:
            close = getattr(records, "aclose", None)
            if close is not None:
                await close()  # its consumer, now
        return out

    def _evict(self) -> None:
        while len(self._kept) > self.size:
            old = next(iter(self._kept))
            del self._kept[old]
            self._locks.pop(old, None)
