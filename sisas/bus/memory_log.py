"""An in-memory :class:`sisas.bus.log.SignalLog` for fast unit tests of handlers and folds.

It keeps the same contract as the JetStream adapter (the shared suite in
``tests/log_contract.py`` proves it): stream sequences from 1, Msg-Id dedup, the
optimistic check over the whole run, strict decoding of what it reads back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from sisas.bus.log import HEADERS_ROOM, AppendResult, check_batch, split_commits
from sisas.errors import AppendConflict
from sisas.signals.envelope import Signal
from sisas.signals.names import commit_subject, parse_run_subject
from sisas.signals.records import (
    CorruptMessage,
    LogRecord,
    StoredSignal,
    commit_id,
    decode_records,
)

__all__ = ["MemoryLog"]


class MemoryLog:
    """Messages in a list; ``inject_raw`` stores arbitrary bytes to test readers."""

    def __init__(self, *, max_payload: int = 8 * 1024 * 1024) -> None:
        self.max_payload = max_payload
        self._messages: list[tuple[str, bytes, str]] = []  # subject, data, msg id
        self._by_id: dict[str, int] = {}
        self._last_of_run: dict[str, int] = {}
        self._changed = asyncio.Event()
        self.listeners: list[Callable[[str, bytes], None]] = []
        """Called with the subject and bytes of each message stored (the commit notices
        of :class:`sisas.bus.memory.MemoryWire`)."""

    def _store(self, subject: str, data: bytes, msg_id: str) -> int:
        self._messages.append((subject, data, msg_id))
        seq = len(self._messages)
        if msg_id:
            self._by_id[msg_id] = seq
        parsed = parse_run_subject(subject)
        if parsed is not None:
            self._last_of_run[parsed[1]] = seq
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.listeners:
            listener(subject, data)
        return seq

    def inject_raw(self, subject: str, data: bytes) -> int:
        """Store ``data`` as is (no checks): for testing how readers treat bad messages."""
        return self._store(subject, data, "")

    async def append(self, signals: Sequence[Signal], *, expected_last_seq: int) -> AppendResult:
        check_batch(signals)
        subject = commit_subject(signals[0].pipeline, signals[0].run_id)
        expected, first, duplicates = expected_last_seq, 0, 0
        for chunk, data in split_commits(signals, self.max_payload - HEADERS_ROOM):
            msg_id = commit_id(chunk)
            actual = self._last_of_run.get(chunk[0].run_id, 0)
            if msg_id in self._by_id:  # dedup: same Msg-Id, the server keeps the first
                seq = self._by_id[msg_id]
                duplicates += len(chunk)
            elif actual != expected:
                raise AppendConflict(
                    f"run {chunk[0].run_id} changed since stream seq {expected} (now {actual}): "
                    "another writer appended first; reload the run and decide again",
                    expected_last_seq=expected,
                    actual_last_seq=actual,
                )
            else:
                seq = self._store(subject, data, msg_id)
            expected, first = seq, first or seq
        return AppendResult(first_seq=first, last_seq=expected, duplicates=duplicates)

    async def last_of_run(self, run_id: str) -> StoredSignal | CorruptMessage | None:
        seq = self._last_of_run.get(run_id)
        if seq is None:
            return None
        subject, data, _ = self._messages[seq - 1]
        return decode_records(seq, subject, data)[-1]

    async def first_of_kind(
        self, run_id: str, kind: str, *, within: int = 4
    ) -> StoredSignal | CorruptMessage | None:
        """The run's first signal of ``kind`` among its first ``within`` messages."""
        seen = 0
        for seq, (subject, data, _) in enumerate(self._messages, 1):
            parsed = parse_run_subject(subject)
            if parsed is None or parsed[1] != run_id:
                continue
            for rec in decode_records(seq, subject, data):
                if isinstance(rec, StoredSignal) and rec.signal.kind == kind:
                    return rec
            seen += 1
            if seen >= within:
                break
        return None

    async def read_run(self, run_id: str) -> list[StoredSignal | CorruptMessage]:
        out: list[StoredSignal | CorruptMessage] = []
        for seq, (subject, data, _) in enumerate(self._messages, 1):
            parsed = parse_run_subject(subject)
            if parsed is not None and parsed[1] == run_id:
                out.extend(decode_records(seq, subject, data))
        return out

    async def follow(
        self,
        *,
        from_seq: int = 1,
        live: bool = False,
        to_seq: int = 0,
        keep: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[LogRecord]:
        seq = max(from_seq, 1)
        end = len(self._messages) if not to_seq else min(to_seq, len(self._messages))
        while True:
            while seq <= len(self._messages) and (live or seq <= end):
                subject, data, _ = self._messages[seq - 1]
                if keep is None or keep(subject):
                    for record in decode_records(seq, subject, data):
                        yield record
                seq += 1
            if not live:
                return
            await self._changed.wait()

    async def follow_run(self, run_id: str) -> AsyncGenerator[StoredSignal | CorruptMessage, None]:
        """Every message of one run from its first, then live as they are appended."""
        async for rec in self.follow(live=True):
            if isinstance(rec, StoredSignal) and rec.signal.run_id == run_id:
                yield rec
            elif isinstance(rec, CorruptMessage):
                parsed = parse_run_subject(rec.subject)
                if parsed is not None and parsed[1] == run_id:
                    yield rec

    async def last_seq(self) -> int:
        return len(self._messages)

    async def identity(self) -> str:
        return f"memory@{id(self)}"
