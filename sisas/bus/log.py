"""The port every log adapter implements, and the append contract.

Two adapters implement :class:`SignalLog`: :class:`sisas.bus.jetstream_log.JetStreamLog`
and :class:`sisas.bus.memory_log.MemoryLog` (fast unit tests). One contract test suite
(``tests/log_contract.py``) runs on both.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Protocol

import msgspec

from sisas.errors import UsageError
from sisas.signals.codec import encode_signal
from sisas.signals.envelope import Signal
from sisas.signals.records import (
    COMMIT_HEAD,
    CorruptMessage,
    LogRecord,
    StoredSignal,
    encode_commit,
)

__all__ = [
    "HEADERS_ROOM",
    "AppendResult",
    "SignalLog",
    "check_batch",
    "own_commit_seq",
    "split_commits",
]

HEADERS_ROOM = 1024
"""Bytes of an appended message kept for its headers (id, expected sequence, trace)."""


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    """Where an append landed: stream sequences of its first and last message (one
    commit, unless the decision was split to fit the server's max payload).

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

    async def first_of_kind(
        self, run_id: str, kind: str, *, within: int = 4
    ) -> StoredSignal | CorruptMessage | None:
        """The run's first signal of ``kind`` among its first ``within`` messages (what a
        run starts with: ``run_requested``, ``run_started``), or None."""
        ...

    async def read_run(self, run_id: str) -> list[StoredSignal | CorruptMessage]:
        """Every stored message of one run, in stream order."""
        ...

    def follow(
        self,
        *,
        from_seq: int = 1,
        live: bool = False,
        to_seq: int = 0,
        keep: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[LogRecord]:
        """The whole log from ``from_seq``: signals, corrupt messages and gaps, in order.

        With ``live=False`` it stops at the end of the log as it was when called, or at
        ``to_seq`` if it is not 0 and earlier. ``keep``: only the messages whose subject
        it accepts are decoded and given (gaps are still given): one reader's share
        when several split the log.
        """
        ...

    def follow_run(self, run_id: str) -> AsyncGenerator[StoredSignal | CorruptMessage, None]:
        """The run's messages from its first, then each one as it is appended (an async
        generator: close it, e.g. with ``contextlib.aclosing``, when done)."""
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


def split_commits(signals: Sequence[Signal], room: int) -> list[tuple[Sequence[Signal], bytes]]:
    """``signals`` as consecutive commits, with their bytes, each fitting in ``room``
    (one commit almost always; a single signal larger than ``room`` is a commit of its
    own, which the server refuses with a message naming the limit)."""
    wires = [encode_signal(s) for s in signals]
    out: list[tuple[Sequence[Signal], bytes]] = []
    head, tail = COMMIT_HEAD, b"]}"
    start, size = 0, len(head) + len(tail)
    for i, wire in enumerate(wires):
        if i > start and size + len(wire) + 1 > room:
            out.append((signals[start:i], head + b",".join(wires[start:i]) + tail))
            start, size = i, len(head) + len(tail)
        size += len(wire) + 1
    out.append((signals[start:], head + b",".join(wires[start:]) + tail))
    return out


def own_commit_seq(
    records: Sequence[StoredSignal | CorruptMessage], chunk: Sequence[Signal], data: bytes
) -> int:
    """The stream seq of the message among ``records`` that is exactly the commit
    ``data`` of ``chunk`` (a retried append whose first try landed), else 0."""
    for rec in records:
        if isinstance(rec, StoredSignal) and rec.signal.id == chunk[0].id and rec.index == 0:
            same = [
                r.signal
                for r in records
                if isinstance(r, StoredSignal) and r.stream_seq == rec.stream_seq
            ]
            return rec.stream_seq if encode_commit(same) == data else 0
    return 0
