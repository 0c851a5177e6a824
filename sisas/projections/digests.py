"""Per-run, per-table digests of the projection: what ``sisas replay verify`` compares.

Every row of every table belongs to one run (``rejected`` rows through their subject;
a hole in the stream, or a message on a foreign subject, belongs to none and is not
compared here: verify reports those from the log itself). A run's digest in a table is
a multiset hash of its rows: the count and the sum, modulo 2**256, of each row's sha256,
so it can be computed in any order, in one streaming pass, on both sides.

Both sides hash the same thing: a row as DuckDB returns it, its timestamps read as
TIMESTAMPTZ (aware, in UTC). :func:`canonical` turns a row built by
:mod:`sisas.projections.rows` into that form (a timestamp in UTC, a DOUBLE a float),
so the rows the verifier derives from the log are hashed without writing them into a
database, and :func:`live_digests` hashes the rows the store holds.
:class:`ExpectedProjection` folds a log (or a run's records) through the projector's
own fold and keeps the digests (or, for one run, the rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import duckdb
import msgspec

from sisas.projections.rows import Row
from sisas.projections.schema import TABLES, Table
from sisas.projections.shares import MemoryFold
from sisas.projections.store import ProjectionStore
from sisas.signals.names import parse_run_subject
from sisas.signals.records import LogRecord, StoredSignal

__all__ = [
    "BY_NAME",
    "ExpectedProjection",
    "RunDigests",
    "canonical",
    "live_digests",
    "live_rows",
    "row_key",
    "shown",
    "run_of_row",
]

BY_NAME: Final[dict[str, Table]] = {t.name: t for t in TABLES}

_MOD: Final = 1 << 256
_ENC: Final = msgspec.json.Encoder()

RunDigests = dict[str, dict[str, str]]
"""run id -> table name -> digest (``"<rows>:<sum hex>"``); a table with no rows of
the run is left out."""


def _kinds(table: Table) -> tuple[tuple[int, str], ...]:
    """The columns whose Python value may differ in type from DuckDB's: timestamps
    (read back as TIMESTAMPTZ, so aware UTC on both sides) and doubles (an int given
    for a DOUBLE column comes back a float)."""
    out = []
    for i, (_, sql_type) in enumerate(table.columns):
        kind = sql_type.split()[0]
        if kind in ("TIMESTAMP", "DOUBLE"):
            out.append((i, kind))
    return tuple(out)


_FIX: Final[dict[str, tuple[tuple[int, str], ...]]] = {t.name: _kinds(t) for t in TABLES}
_RUN_AT: Final[dict[str, int]] = {
    t.name: t.names.index("run_id") for t in TABLES if "run_id" in t.names
}


def _utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:  # DuckDB's TIMESTAMP columns hold UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def canonical(table: Table, row: Sequence[object]) -> Row:
    """``row`` (in ``table``'s column order) as :func:`live_rows` reads it back from
    DuckDB: timestamps aware in UTC, doubles as floats."""
    out = list(row)
    for i, kind in _FIX[table.name]:
        value = out[i]
        if value is None:
            continue
        if kind == "TIMESTAMP":
            assert isinstance(value, datetime)
            out[i] = _utc(value)
        elif type(value) is not float:
            out[i] = float(value)  # type: ignore[arg-type]
    return tuple(out)


def run_of_row(table: Table, row: Sequence[object]) -> str:
    """The run a row of ``table`` belongs to ("" for none)."""
    at = _RUN_AT.get(table.name)
    if at is None:  # rejected: the run its subject names
        parsed = parse_run_subject(str(row[3]))
        return parsed[1] if parsed else ""
    return str(row[at])


def row_key(table: Table, row: Sequence[object]) -> tuple[object, ...]:
    """What names a row in a diff: its table's key (with the run for state tables)."""
    names = table.names
    key = table.key if "run_id" in table.key or "run_id" not in names else ("run_id", *table.key)
    return tuple(row[names.index(k)] for k in key)


class _Sums:
    """Multiset digests, accumulated row by row."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], list[int]] = {}

    def add(self, table: Table, row: Sequence[object], *, coerce: bool) -> None:
        run_id = run_of_row(table, row)
        if not run_id:
            return
        data = _ENC.encode(canonical(table, row) if coerce else tuple(row))
        h = int.from_bytes(hashlib.sha256(data).digest(), "big")
        acc = self._sums.get((run_id, table.name))
        if acc is None:
            self._sums[(run_id, table.name)] = [1, h]
        else:
            acc[0] += 1
            acc[1] = (acc[1] + h) % _MOD

    def digests(self) -> RunDigests:
        out: RunDigests = {}
        for (run_id, table), (n, total) in self._sums.items():
            out.setdefault(run_id, {})[table] = f"{n}:{total:064x}"
        return out


def _select(con: duckdb.DuckDBPyConnection, table: Table, run_ids: list[str]) -> Iterator[Row]:
    cur = con.cursor()
    columns = ", ".join(
        f"{name}::TIMESTAMPTZ AS {name}" if sql_type.startswith("TIMESTAMP") else name
        for name, sql_type in table.columns
    )
    try:
        if table.name == "rejected":  # no run column: filtered by subject below
            cur.execute(f"SELECT {columns} FROM rejected")
        else:
            cur.execute(
                f"SELECT {columns} FROM {table.name} WHERE list_contains(?, run_id)", [run_ids]
            )
        wanted = set(run_ids)
        while chunk := cur.fetchmany(20_000):
            for row in chunk:
                if table.name != "rejected" or run_of_row(table, row) in wanted:
                    yield row
    finally:
        cur.close()


def live_digests(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> RunDigests:
    """The digests of ``run_ids`` in the store behind ``con``, every table."""
    sums = _Sums()
    for table in TABLES:
        for row in _select(con, table, run_ids):
            sums.add(table, row, coerce=False)
    return sums.digests()


def live_rows(
    con: duckdb.DuckDBPyConnection, run_id: str, table: str, *, offset: int = 0, limit: int = 0
) -> list[Row]:
    """The rows of ``run_id`` in ``table`` as the store holds them, in key order (a page
    of ``limit`` rows from ``offset`` when ``limit``)."""
    t = BY_NAME[table]
    found = sorted(_select(con, t, [run_id]), key=lambda r: _ENC.encode(row_key(t, r)))
    return found[offset : offset + limit] if limit else found


_LONG: Final = 200


def shown(table: Table, row: Sequence[object]) -> list[Any]:
    """``row`` (as :func:`live_rows` reads it) as JSON data for a diff: a BLOB or a long string
    stands as the sha256 of its bytes, so any row fits in an answer."""
    out: list[Any] = []
    assert len(row) == len(table.columns)
    for value in row:
        if isinstance(value, bytes | bytearray) or (isinstance(value, str) and len(value) > _LONG):
            data = value.encode() if isinstance(value, str) else bytes(value)
            out.append(f"sha256:{hashlib.sha256(data).hexdigest()} ({len(data)} bytes)")
        else:
            out.append(msgspec.to_builtins(value))
    return out


class ExpectedProjection:
    """The rows the projector would write for the records it is given, folded by the
    projector's own code (:meth:`Projector.fold_batch`) without a store: it keeps the
    digests of every run, and with ``keep_rows`` the rows themselves (for one run).

    Feed it records in stream order (:meth:`add`), then read :meth:`digests`. The rows
    of a run depend on that run's records alone, so a run's records read on their own
    give the rows the whole log gives for it.
    """

    def __init__(self, *, keep_rows: bool = False, batch: int = 2_000) -> None:
        self._store = ProjectionStore(None)  # empty: the fold never finds a stored run
        self._fold = MemoryFold(self._store)
        self._sums = _Sums()
        self._pending: list[LogRecord] = []
        self._batch = batch
        self._kept: dict[str, list[Row]] | None = (
            {t.name: [] for t in TABLES} if keep_rows else None
        )

    def close(self) -> None:
        self._store.close()

    def add(self, record: LogRecord) -> None:
        self._pending.append(record)
        if len(self._pending) >= self._batch and (
            not isinstance(record, StoredSignal) or record.last_in_message
        ):
            self._flush()

    def extend(self, records: Iterable[LogRecord]) -> ExpectedProjection:
        for record in records:
            self.add(record)
        return self

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = self._fold.fold(self._pending)
        self._pending = []
        for name, facts in batch.facts.items():
            self._rows(BY_NAME[name], facts)

    def _rows(self, table: Table, found: Iterable[Row]) -> None:
        for row in found:
            self._sums.add(table, row, coerce=True)
            if self._kept is not None:
                self._kept[table.name].append(canonical(table, row))

    def digests(self) -> RunDigests:
        """Every run's digests, its state rows as its last record left them."""
        self._flush()
        for table in BY_NAME["runs"], BY_NAME["run_states"], BY_NAME["phases"]:
            self._rows(table, self._fold.state_rows(table.name))
        self._fold.runs.clear()  # taken once: the state rows are now in the sums
        return self._sums.digests()

    def rows(self, table: str) -> list[Row]:
        """The rows kept of ``table`` (``keep_rows``), after :meth:`digests`."""
        assert self._kept is not None, "rows are kept only with keep_rows=True"
        return self._kept[table]
