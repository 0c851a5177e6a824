"""A run's detail as the projection shows it, kept current record by record.

:class:`RunIndex` screens a run's stored records as the projector does
(:func:`sisas.projections.screen.screen_signal`: the signals ``sisas replay verify``
flags are left out, the first is named) and takes each signal shown into its
:class:`~sisas.dashboard.detail.RunDetail`. Built once from the run's records, it is then
extended with the records that follow, so keeping a live run's page current costs
O(new signals), not a read and refold of the whole run per change.

:meth:`RunIndex.catch_up` takes only records that continue the run's chain where the
index stands; anything else (a record it cannot place: a gap, a message that is not a
signal, a signal out of order) makes it answer False, and the caller builds the index
again from the log, which screens such records exactly as the projector does. Pure: no
I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from sisas.dashboard.detail import RunDetail
from sisas.handlers.state import RunState
from sisas.projections.rows import Tracked
from sisas.projections.screen import screen_corrupt, screen_signal
from sisas.signals.records import CorruptMessage, StoredSignal

__all__ = ["RunIndex"]

Position = tuple[int, int]
"""(stream seq, index in its message): where a record lies in the log."""


class RunIndex:
    """One run's screened detail and where in the log it stands."""

    __slots__ = ("_hashes", "_tracked", "corrupt", "detail", "position", "stored")

    def __init__(self) -> None:
        self._tracked: Tracked | None = None
        self._hashes: dict[int, str] = {}
        self.detail = RunDetail(state=RunState.new("", ""))
        self.detail.stored = 0
        self.stored = 0
        self.corrupt = 0
        self.position: Position = (0, 0)

    @classmethod
    def of(cls, records: Iterable[StoredSignal | CorruptMessage]) -> RunIndex:
        """The index of a run's records, all of them, in stream order."""
        index = cls()
        for record in records:
            index._take(record)
        index._settle()
        return index

    def catch_up(self, records: Iterable[StoredSignal | CorruptMessage]) -> bool:
        """Take the records that follow where the index stands (those it holds already
        are passed over); False, having taken those before it, at the first one that
        does not continue the run's chain: the index must then be built again."""
        try:
            for record in records:
                if not isinstance(record, StoredSignal):
                    return False
                if (record.stream_seq, record.index) <= self.position:
                    continue  # read with the run already
                head = self._tracked.state.head.seq if self._tracked is not None else 0
                if record.signal.seq != head + 1:
                    return False
                self._take(record)
            return True
        finally:
            self._settle()

    def at(self, record: StoredSignal | CorruptMessage) -> bool:
        """Whether the index stands at ``record`` (the run's last, as the log says)."""
        index = record.index if isinstance(record, StoredSignal) else 0
        return (record.stream_seq, index) == self.position

    def _take(self, record: StoredSignal | CorruptMessage) -> None:
        if isinstance(record, CorruptMessage):
            self.corrupt += 1
            if self._tracked is not None:
                self._tracked = screen_corrupt(self._tracked, record)
            self.position = (record.stream_seq, 0)
            return
        self.stored += 1
        s = record.signal
        hashes = self._hashes
        step = screen_signal(self._tracked, record.stream_seq, s, lambda _r, n: hashes.get(n))
        if not step.rejected:
            hashes.setdefault(s.seq, s.hash)
        if step.shown:
            self.detail.add(s)
        self._tracked = step.tracked or self._tracked
        self.position = (record.stream_seq, record.index)

    def _settle(self) -> None:
        """The detail's state, counts and tamper, after the records taken."""
        detail, tracked = self.detail, self._tracked
        if tracked is not None:
            detail.state = tracked.view
            tamper = tracked.tamper
            if tamper is not None:
                detail.tampered = {
                    "stream_seq": tamper.stream_seq,
                    "problem": tamper.problem,
                    "message": tamper.message,
                }
        detail.stored, detail.corrupt = self.stored, self.corrupt
