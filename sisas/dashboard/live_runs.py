"""The runs the dashboard's pages look at, each kept current from the live stream.

:class:`RunDetails` keeps the :class:`~sisas.dashboard.index.RunIndex` of the runs lately
asked for. The hub hands it every record it reads (:meth:`RunDetails.feed`), so a page
load of a live run takes in the signals since the last load, O(new signals), instead of
reading and folding the whole run again, and without asking the log anything: the index
is as current as the hub, which tells the pages of a change only once it has handed the
index its records. One that cannot be continued is built again from the log.
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

__all__ = ["RunDetails"]

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    a signal) is built again from the log."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._kept: dict[str, _Kept] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.built = 0
        """Indexes built from a read of the whole run (the first time, or one that
        could not be continued)."""
        self.continued = 0
        """Times an index was brought up to date from the hub's records alone."""

    def refresh(self, run_id: str) -> float:
        """Seconds between two reloads of the run's page at most, as its last summary
        said (0.25 until one was built)."""
        kept = self._kept.get(run_id)
        return 0.25 if kept is None or kept.index is None else kept.index.detail.refresh

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
        kept = self._kept.get(run_id)
        if kept is not None and kept.index is not None and not kept.stale:
            # As current as the hub: a page reloads when the hub tells it of a change,
            # and the hub hands the records to :meth:`feed` before it tells anyone, so
            # the index holds at least what the page was told of; no read of the log.
            index, pending = kept.index, kept.pending
            kept.pending = []
            if await asyncio.to_thread(index.catch_up, pending):
                self.continued += 1
                return index.detail
            log.debug("run %s: index built again (a record that does not follow)", run_id)
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

    def _evict(self) -> None:
        while len(self._kept) > self.size:
            old = next(iter(self._kept))
            del self._kept[old]
            self._locks.pop(old, None)
