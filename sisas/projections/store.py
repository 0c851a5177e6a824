"""The DuckDB file behind the projection: one writer, one transaction per batch.

:class:`ProjectionStore` owns the connection. :meth:`ProjectionStore.write` stores a
batch's rows *and* the checkpoint in one transaction, so after a crash the tables hold
exactly the signals up to the checkpoint. :meth:`ProjectionStore.digest` hashes every
table in its canonical order: the state digest, equal for a live projection and a
rebuild at the same stream sequence.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import duckdb
import msgspec

from sisas.errors import ProjectionBusy, ProjectionError
from sisas.faults import failpoint
from sisas.projections.rows import Row, Tracked
from sisas.projections.schema import BOOKKEEPING, SCHEMA_VERSION, STATE_TABLES, TABLES, Table

__all__ = [
    "CHECKPOINT_THRESHOLD",
    "MEMORY_LIMIT",
    "Batch",
    "ProjectionStore",
    "StoredRun",
    "translated",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a DuckDB error raised while doing ``what`` into a :class:`ProjectionError`."""
    try:
        yield
    except duckdb.Error as exc:
        raise ProjectionError(
            f"{what} failed in DuckDB: {exc}; the projection is derived from the log: "
            "`sisas projections rebuild` (or deleting projection.duckdb) recreates it"
        ) from exc


def _translating(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            with translated(what):
                return fn(*args, **kwargs)

        return call

    return wrap


_ROW = msgspec.json.Encoder()

MEMORY_LIMIT: Final = "128MB"
"""DuckDB's buffer pool for the projection (``SET memory_limit``)."""

CHECKPOINT_THRESHOLD: Final = "32MB"
"""WAL written before DuckDB checkpoints it into the file (``SET checkpoint_threshold``):
the rows not yet checkpointed are held in memory, within :data:`MEMORY_LIMIT`."""


@dataclass
class StoredRun:
    """A run's folded state as stored: the encoded state and where its signals lie, and
    what the projection shows of it when that differs (``run_states.screen``)."""

    state: bytes
    first_stream_seq: int
    last_stream_seq: int
    screen: bytes | None = None


@dataclass
class Batch:
    """The rows of a batch of signals and the stream sequence it ends at."""

    last_seq: int
    facts: dict[str, list[Row]] = field(
        default_factory=lambda: {"signals": [], "checks": [], "metrics": [], "rejected": []}
    )
    runs: dict[str, list[Row]] = field(
        default_factory=lambda: {"runs": [], "run_states": [], "phases": []}
    )
    states: dict[str, Tracked] = field(default_factory=dict)
    """The folded state of each run the batch moved (its rows in ``runs`` replace the
    stored ones)."""
    touched: set[str] = field(default_factory=set)
    """Runs moved besides those of ``states`` (a batch folded elsewhere, in shares)."""
    fresh: set[str] = field(default_factory=set)
    """Runs of ``states`` or ``touched`` the store holds no rows of yet (first folded in
    this batch): nothing of theirs to delete before their rows are inserted."""


class ProjectionStore:
    """The projection's DuckDB file (or an in-memory database when ``path`` is None)."""

    def __init__(
        self,
        path: Path | None,
        *,
        lock_wait: float = 10.0,
        memory_limit: str = MEMORY_LIMIT,
        checkpoint_threshold: str = CHECKPOINT_THRESHOLD,
    ) -> None:
        """``memory_limit``: DuckDB's buffer pool (what it caches of the file, the rows
        not yet checkpointed, its indexes); ``checkpoint_threshold``: how much WAL (rows
        held in memory until checkpointed) before a checkpoint writes them to the file."""
        self.path = path
        self._memory_limit = memory_limit
        self._checkpoint_threshold = checkpoint_threshold
        self._con = _connect(path, lock_wait)
        with translated(f"opening the projection {path or ':memory:'}"):
            self._setup()

    def _setup(self) -> None:
        self._con.execute("SET TimeZone = 'UTC'")
        # Rows appended since the last checkpoint stay in memory until the WAL reaches
        # the threshold; the buffer pool caches what was checkpointed, up to the limit
        # (evicting the file's blocks past it). Both bound the projector's memory
        # however long the log grows (docs/performance.md, "Peak memory of a rebuild").
        self._con.execute(f"SET checkpoint_threshold = '{self._checkpoint_threshold}'")
        # One DuckDB thread: the other core folds signals in Python.
        self._con.execute("SET threads = 1")
        self._con.execute(f"SET memory_limit = '{self._memory_limit}'")
        for ddl in BOOKKEEPING:
            self._con.execute(ddl)
        for table in TABLES:
            self._con.execute(table.ddl())
        self._reader = self._con.cursor()

    def close(self) -> None:
        self._reader.close()
        self._con.close()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        return self._con

    # -- bookkeeping ------------------------------------------------------------------

    @_translating("reading the checkpoint")
    def checkpoint(self) -> int:
        row = self._con.execute("SELECT stream_seq FROM checkpoint WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    @_translating("reading the projection's metadata")
    def meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return str(row[0]) if row else None

    @_translating("binding the projection to its log")
    def bind(self, stream: str) -> bool:
        """Tie the tables to ``stream`` (an identity of the log); reset them if they
        were folded from another log or by another schema version. True if reset."""
        expected = {"schema_version": str(SCHEMA_VERSION), "stream": stream}
        current = {k: self.meta(k) for k in expected}
        reset = False
        if current != expected:
            if any(v is not None for v in current.values()) or self.checkpoint():
                log.warning(
                    "projection %s was folded from %s; rebuilding it for %s",
                    self.path or ":memory:",
                    current,
                    expected,
                )
                self.reset()
                reset = True
            self._con.execute("BEGIN TRANSACTION")
            for k, v in expected.items():
                self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [k, v])
            self._con.execute("COMMIT")
        return reset

    @_translating("resetting the projection")
    def reset(self) -> None:
        """Drop every table and the checkpoint, then recreate them empty."""
        self._con.execute("BEGIN TRANSACTION")
        for table in TABLES:
            self._con.execute(f"DROP TABLE IF EXISTS {table.name}")
        self._con.execute("DELETE FROM checkpoint")
        for table in TABLES:
            self._con.execute(table.ddl())
        self._con.execute("COMMIT")

    # -- the fold's state -------------------------------------------------------------

    @_translating("reading run states")
    def load_runs(self, run_ids: set[str]) -> dict[str, StoredRun]:
        """The stored states of ``run_ids`` (those it has), read through a cursor of
        their own so a write in another thread is not disturbed."""
        if not run_ids:
            return {}
        found = self._reader.execute(
            "SELECT run_id, state, first_stream_seq, last_stream_seq, screen "
            "FROM run_states WHERE run_id = ANY(?)",
            [sorted(run_ids)],
        ).fetchall()
        return {
            r[0]: StoredRun(
                state=bytes(r[1]),
                first_stream_seq=r[2],
                last_stream_seq=r[3],
                screen=None if r[4] is None else bytes(r[4]),
            )
            for r in found
        }

    @_translating("reading a signal's hash")
    def signal_hash(self, run_id: str, seq: int) -> str | None:
        """The hash of the first stored signal ``seq`` of ``run_id`` (committed rows)."""
        # fetchall, not fetchone: a result left unfinished would hold the reader's cursor
        rows = self._reader.execute(
            "SELECT hash FROM signals WHERE run_id = ? AND seq = ? ORDER BY stream_seq LIMIT 1",
            [run_id, seq],
        ).fetchall()
        return str(rows[0][0]) if rows else None

    # -- writing ----------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Store ``batch`` and move the checkpoint to its end, atomically."""
        con = self._con
        try:
            con.execute("BEGIN TRANSACTION")
            if batch.states or batch.touched:
                moved = batch.touched.union(batch.states).difference(batch.fresh)
                if moved:
                    stale = [(run_id,) for run_id in sorted(moved)]
                    for table in STATE_TABLES:
                        with con.appender(table.name, action="delete", key=["run_id"]) as gone:
                            gone.append_rows(stale)
                for name, rows in batch.runs.items():
                    self._insert(name, rows)
            for name, rows in batch.facts.items():
                self._insert(name, rows)
            self._move_checkpoint(batch.last_seq)
            failpoint("projector.mid_batch")
            con.execute("COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise ProjectionError(
                f"writing the projection failed at stream sequence {batch.last_seq}: {exc}; "
                "nothing of the batch was kept, the projector will retry it"
            ) from exc

    def _insert(self, table: str, rows: Sequence[Row]) -> None:
        """Append ``rows`` (tuples in column order) to ``table`` in one flush: DuckDB's
        appender, in the open transaction; cheaper per batch than registering the rows
        as a view and inserting from it (bench figures in docs/performance.md)."""
        if rows:
            with self._con.appender(table) as appender:
                appender.append_rows(rows)

    def _move_checkpoint(self, stream_seq: int) -> None:
        # UPDATE of the one row costs a fraction of an upsert; the row exists after the
        # first batch (a file never written, or reset, has none: checkpoint() reads 0).
        done = self._con.execute(
            "UPDATE checkpoint SET stream_seq = ? WHERE id = 1", [stream_seq]
        ).fetchone()
        if not done or not done[0]:
            self._con.execute("INSERT INTO checkpoint VALUES (1, ?)", [stream_seq])

    # -- the state digest -------------------------------------------------------------

    @_translating("digesting the projection")
    def digest(self) -> str:
        """sha256 over every table's rows in canonical order (and the checkpoint)."""
        # Rows not yet checkpointed stay in memory, where the sorts below cannot evict
        # them: write them to the file first, so the sorts have the buffer pool.
        self._con.execute("CHECKPOINT")
        h = hashlib.sha256()
        h.update(f"checkpoint {self.checkpoint()}\n".encode())
        for table in TABLES:
            h.update(f"table {table.name}\n".encode())
            for chunk in self._rows(table):
                h.update(b"".join(_ROW.encode(list(row)) + b"\n" for row in chunk))
        return "sha256:" + h.hexdigest()

    def _rows(self, table: Table) -> Iterator[list[tuple[Any, ...]]]:
        """``table``'s rows in key order, in chunks. A state table is sorted a thousand
        runs at a time: sorting ``run_states`` (a few KB of state per run) whole needs
        more than the buffer pool holds."""
        cur = self._con.cursor()
        order = f"ORDER BY {', '.join(table.key)}"
        try:
            if table not in STATE_TABLES:
                cur.execute(f"SELECT * FROM {table.name} {order}")
                while chunk := cur.fetchmany(20_000):
                    yield chunk
                return
            runs = cur.execute(f"SELECT DISTINCT run_id FROM {table.name} ORDER BY run_id")
            run_ids = [r[0] for r in runs.fetchall()]
            for at in range(0, len(run_ids), 1_000):
                some = run_ids[at : at + 1_000]
                cur.execute(
                    f"SELECT * FROM {table.name} WHERE run_id BETWEEN ? AND ? {order}",
                    [some[0], some[-1]],
                )
                yield cur.fetchall()
        finally:
            cur.close()

    @_translating("counting rows")
    def counts(self) -> dict[str, int]:
        out = {}
        for table in TABLES:
            row = self._con.execute(f"SELECT count(*) FROM {table.name}").fetchone()
            out[table.name] = int(row[0]) if row else 0
        return out


def _connect(path: Path | None, lock_wait: float) -> duckdb.DuckDBPyConnection:
    if path is None:
        return duckdb.connect(":memory:")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise ProjectionError(
                    f"cannot open the projection {path}: {exc}; if the file is damaged, "
                    "delete it and it will be rebuilt from the log"
                ) from exc
            if time.monotonic() > deadline:
                raise ProjectionBusy(
                    f"the projection {path} is held by another process "
                    f"({_holder(str(exc))}) that answers no queries; stop it, or run "
                    "`sisas up` so queries go through its projector"
                ) from exc
            time.sleep(0.1)
        except duckdb.Error as exc:
            raise ProjectionError(
                f"cannot open the projection {path}: {exc}; if the file is damaged, "
                "delete it and it will be rebuilt from the log"
            ) from exc


def _holder(message: str) -> str:
    marker = "PID"
    at = message.find(marker)
    return message[at:].split(")")[0] if at >= 0 else "unknown process"
