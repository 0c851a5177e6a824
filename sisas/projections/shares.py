"""Folding the log in shares: runs split by a hash of their id, each share folded on its own.

Runs are independent chains, and a run's rows depend on its records alone, so a log can
be folded by several processes, each reading it and folding only the runs of its share
(:func:`sisas.signals.names.partition_of`), and the rows written by one writer.

:class:`ShareFold` folds one share's records (the projector's own fold, over an empty
store: :class:`MemoryFold`) and cuts them at fixed stream-sequence boundaries into
:class:`Chunk` s; :func:`merged` joins the chunks of every share at one boundary into a
:class:`~sisas.projections.store.Batch` the store writes with the checkpoint in one
transaction. After each write the tables hold exactly what a serial fold holds at that
boundary, so a rebuild killed midway resumes from its checkpoint like any other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sisas.projections import rows
from sisas.projections.projector import Projector
from sisas.projections.rows import Row, Tracked
from sisas.projections.store import Batch, ProjectionStore
from sisas.signals.records import LogGap, LogRecord

__all__ = [
    "SPILL_CHECKPOINT",
    "SPILL_MEMORY_LIMIT",
    "Chunk",
    "MemoryFold",
    "ShareFold",
    "SpillingFold",
    "boundaries",
    "merged",
]

_UNSET: Final = bytes(32)

SPILL_MEMORY_LIMIT: Final = "96MB"
"""DuckDB's buffer pool in a share's fold (its store holds two tables, written once)."""

SPILL_CHECKPOINT: Final = "16MB"


@dataclass
class Chunk:
    """One share's rows of the records up to ``boundary`` (after the previous one):
    appended facts, and the rows of the runs it moved (replacing their stored ones)."""

    boundary: int
    last_seq: int
    facts: dict[str, list[Row]] = field(default_factory=dict)
    runs: dict[str, list[Row]] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    """Runs of ``touched`` first folded in this chunk (no rows of theirs stored yet)."""


def boundaries(first: int, target: int, every: int) -> list[int]:
    """The stream sequences the shares cut their chunks at, from ``first`` to ``target``."""
    out = list(range(first - 1 + every, target, every))
    return [*out, target] if target >= first else []


def merged(chunks: Sequence[Chunk]) -> Batch:
    """The batch of every share's chunk at one boundary."""
    batch = Batch(last_seq=max(c.last_seq for c in chunks))
    for chunk in chunks:
        for name, found in chunk.facts.items():
            batch.facts[name].extend(found)
        for name, found in chunk.runs.items():
            batch.runs[name].extend(found)
        batch.touched.update(chunk.touched)
        batch.fresh.update(chunk.fresh)
    return batch


class ShareFold:
    """Folds share ``share`` of ``shares``: fed its records in stream order (only its
    runs', and the holes of the stream), it gives a chunk at each boundary."""

    def __init__(
        self, share: int, shares: int, cuts: list[int], spill: Path, *, cache_runs: int = 2_000
    ) -> None:
        """``spill``: a DuckDB file of the fold's own (created, and left for the caller
        to delete) holding the states and signal hashes of the runs it folded;
        ``cache_runs``: the run states kept in memory besides."""
        self.share = share
        self.shares = shares
        self._store = ProjectionStore(
            spill, memory_limit=SPILL_MEMORY_LIMIT, checkpoint_threshold=SPILL_CHECKPOINT
        )
        self._fold = SpillingFold(self._store, cache_runs=cache_runs)
        self._cuts = iter(cuts)
        self._boundary = next(self._cuts, 0)
        self._pending: list[LogRecord] = []

    def close(self) -> None:
        self._store.close()

    def add(self, record: LogRecord) -> Iterator[Chunk]:
        """Take ``record``; the chunks of the boundaries it is past."""
        start = record.first if isinstance(record, LogGap) else record.stream_seq
        while self._boundary and start > self._boundary:
            yield self._cut()
        if isinstance(record, LogGap) and self.share != 0:
            return  # a hole is every share's to see and share 0's to record
        self._pending.append(record)

    def reach(self, seq: int) -> Iterator[Chunk]:
        """The chunks of the boundaries up to ``seq``: every message of the share up to
        it was added (the reader says so, handing the messages on)."""
        while self._boundary and seq >= self._boundary:
            yield self._cut()

    def finish(self) -> Iterator[Chunk]:
        """The chunks of the boundaries left."""
        while self._boundary:
            yield self._cut()

    def _cut(self) -> Chunk:
        boundary = self._boundary
        self._boundary = next(self._cuts, 0)
        if not self._pending:
            return Chunk(boundary=boundary, last_seq=boundary)
        batch = self._fold.fold(self._pending)
        self._pending = []
        return Chunk(
            boundary=boundary,
            last_seq=max(boundary, batch.last_seq),
            facts=batch.facts,
            runs=batch.runs,
            touched=sorted(batch.states),
            fresh=sorted(batch.fresh),
        )


class SpillingFold(Projector):
    """The projector's fold of one share, its memory bounded: the states of at most
    ``cache_runs`` runs in memory, with the hashes of their signals (32 bytes a signal);
    a run dropped from memory goes to its own store (``run_states``, and its hashes in
    ``spilled_hashes``), read back when the run moves again, as the projector reads
    its store. Only dropped runs are written: a run that ends while in memory costs
    one row."""

    def __init__(self, store: ProjectionStore, *, cache_runs: int = 2_000) -> None:
        super().__init__(_NoLog(), store, cache_runs=cache_runs)
        self._hashes: dict[str, bytearray] = {}  # run -> 32 bytes per seq, zeros unset
        self._out: list[tuple[str, Tracked]] = []
        store.con.execute(
            "CREATE TABLE IF NOT EXISTS spilled_hashes (run_id VARCHAR PRIMARY KEY, hashes BLOB)"
        )

    def fold(self, records: list[LogRecord]) -> Batch:
        """The rows of ``records``; what a later record of the same runs needs is kept."""
        batch = self.fold_batch(records)
        for row in batch.facts["signals"]:  # the store answers with the first one stored
            stored = self._hashes.setdefault(str(row[1]), bytearray())
            _set_hash(stored, int(row[3]), str(row[9]))  # type: ignore[call-overload]
        self.applied_seq = batch.last_seq
        for run_id, t in batch.states.items():
            self._remember(run_id, t)
        self._spill(batch.last_seq)
        return batch

    def _prefetch(self, records: list[LogRecord]) -> None:
        """The projector's read-back of the batch's runs not in memory, and their
        hashes with them (one query each per batch; a run never seen costs none)."""
        super()._prefetch(records)
        back = sorted(self._prefetched)
        if back:
            found = self.store.con.execute(
                "SELECT run_id, hashes FROM spilled_hashes WHERE run_id = ANY(?)", [back]
            ).fetchall()
            self._hashes.update((str(r[0]), bytearray(r[1])) for r in found)

    def _dropped(self, run_id: str, t: Tracked) -> None:
        self._out.append((run_id, t))

    def _spill(self, last_seq: int) -> None:
        if not self._out:
            return
        out = dict(self._out)  # the last state of a run dropped twice
        self._out = []
        states: list[Row] = [
            (
                run_id,
                t.first_stream_seq,
                t.last_stream_seq,
                rows.encode_state(t.state),
                rows.encode_screen(t),
            )
            for run_id, t in sorted(out.items())
        ]
        self.store.write(Batch(last_seq=last_seq, runs={"run_states": states}, touched=set(out)))
        gone = [(run_id,) for run_id in sorted(out)]
        hashes = [(run_id, bytes(self._hashes.pop(run_id, b""))) for run_id in sorted(out)]
        con = self.store.con
        con.execute("BEGIN TRANSACTION")
        with con.appender("spilled_hashes", action="delete", key=["run_id"]) as old:
            old.append_rows(gone)
        with con.appender("spilled_hashes") as new:
            new.append_rows(hashes)
        con.execute("COMMIT")

    def _hash_at(self, run_id: str, seq: int) -> str | None:
        for row in self._folding:
            if row[1] == run_id and row[3] == seq:
                return str(row[9])
        return _hash_of(self._hashes.get(run_id, bytearray()), seq)


def _set_hash(stored: bytearray, seq: int, hex_hash: str) -> None:
    """Record ``seq``'s hash unless one is recorded (the first stored is the one kept)."""
    at = (seq - 1) * 32
    if at + 32 > len(stored):
        stored.extend(bytes(at + 32 - len(stored)))
    if stored[at : at + 32] == _UNSET:
        stored[at : at + 32] = bytes.fromhex(hex_hash)


def _hash_of(stored: bytearray, seq: int) -> str | None:
    found = bytes(stored[(seq - 1) * 32 : seq * 32])
    return found.hex() if len(found) == 32 and found != _UNSET else None


class MemoryFold(Projector):
    """The projector's fold over an empty store: every run stays in memory, and the hash
    of a run's earlier signal (asked when one behind its head arrives) is looked up in a
    compact per-run record of the signals the fold stored, as the store would answer."""

    def __init__(self, store: ProjectionStore) -> None:
        super().__init__(_NoLog(), store, cache_runs=1 << 62)
        self.runs: dict[str, Tracked] = {}
        self._stored: dict[str, bytearray] = {}  # run -> 32 bytes per seq, zeros unset

    def fold(self, records: list[LogRecord]) -> Batch:
        batch = self.fold_batch(records)
        self.runs.update(batch.states)
        for run_id, t in batch.states.items():
            self._remember(run_id, t)
        for row in batch.facts["signals"]:  # the store answers with the first one stored
            stored = self._stored.setdefault(str(row[1]), bytearray())
            _set_hash(stored, int(row[3]), str(row[9]))  # type: ignore[call-overload]
        return batch

    def _hash_at(self, run_id: str, seq: int) -> str | None:
        for row in self._folding:
            if row[1] == run_id and row[3] == seq:
                return str(row[9])
        return _hash_of(self._stored.get(run_id, bytearray()), seq)

    def state_rows(self, table: str) -> Iterator[Row]:
        """The rows of ``table`` (a state table) of every run folded."""
        for run_id in sorted(self.runs):
            t = self.runs[run_id]
            if table == "runs":
                yield rows.run_row(t)
            elif table == "run_states":
                yield (
                    run_id,
                    t.first_stream_seq,
                    t.last_stream_seq,
                    rows.encode_state(t.state),
                    rows.encode_screen(t),
                )
            else:
                yield from rows.phase_rows(t.view)


class _NoLog:
    async def last_seq(self) -> int:
        return 0

    def follow(self, *, from_seq: int = 1, live: bool = False) -> Any:
        raise NotImplementedError("a memory fold is fed, it reads no log")
