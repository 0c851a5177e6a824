"""The port every log adapter implements, and the append contract.

Two adapters implement :class:`SignalLog`: :class:`sisas.bus.jetstream_log.JetStreamLog`
and :class:`sisas.bus.memory_log.MemoryLog` (fast unit tests). One contract test suite
(``tests/log_contract.py``) runs on both.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import msgspec

from sisas.errors import UsageError
from sisas.signals.envelope import Signal
from sisas.signals.records import CorruptMessage, LogRecord, StoredSignal

__all__ = ["AppendResult", "SignalLog", "check_batch"]


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where an append landed: stream sequences of its first and last signal.

    ``duplicates`` counts signals that were already in the log (a retried decision):
    appending the same signals twice is a no-op that reports them as duplicates.
    """

    first_seq: int
    last_seq: int
    duplicates: int = 0


class SignalLog(Protocol):
    """An append-only store of hash-chained signals, one chain per run."""

    async def append(self, signals: Sequence[Signal], *, expected_last_seq: int) -> AppendResult:
        """Append consecutive signals of one run.

        ``expected_last_seq`` is the stream sequence of the run's last signal as the
        caller saw it (0 for a new run). Raises :class:`sisas.errors.AppendConflict`
        when another writer appended to the run since; re-appending signals already in
        the log (same ids and bytes) is not a conflict.
        """
        ...

    async def last_of_run(self, run_id: str) -> StoredSignal | CorruptMessage | None:
        """The run's last stored message, or None for an unknown run."""
        ...

    async def read_run(self, run_id: str) -> list[StoredSignal | CorruptMessage]:
        """Every stored message of one run, in stream order."""
        ...

    def follow(self, *, from_seq: int = 1, live: bool = False) -> AsyncIterator[LogRecord]:
        """The whole log from ``from_seq``: signals, corrupt messages and gaps, in order.

        With ``live=False`` it stops at the end of the log as it was when called.
        """
        ...

    async def last_seq(self) -> int:
        """The stream sequence of the log's last message (0 when empty)."""
        ...

    async def identity(self) -> str:
        """What tells this log from another one with the same name (a recreated stream)."""
        ...


def check_batch(signals: Sequence[Signal]) -> None:
    """Raise :class:`UsageError` unless ``signals`` are consecutive signals of one run."""
    if not signals:
        raise UsageError("append needs at least one signal")
    first = signals[0]
    for prev, cur in itertools.pairwise(signals):
        if cur.run_id != first.run_id or cur.pipeline != first.pipeline:
            raise UsageError("one append must hold signals of a single run")
        if cur.seq != prev.seq + 1 or cur.prev != prev.hash:
            raise UsageError(f"signals {prev.id} and {cur.id} are not consecutive in the chain")
