"""The DuckDB tables of the projection: what each holds and the order that makes it canonical.

Two kinds of table:

- *facts*, one row per signal (``signals``, ``checks``, ``metrics``) or per message that
  could not be applied (``rejected``): appended, never changed;
- *state*, one row per run (``runs``, ``run_states``) or per phase (``phases``): the
  rows of :func:`sisas.handlers.state.evolve`'s result, replaced whenever a run moves.
  ``runs`` and ``phases`` show the fold without the signals verify flags
  (:mod:`sisas.projections.screen`); ``run_states.state`` is the fold of every signal
  that extends the run's chain (the orchestrator's), ``run_states.screen`` the rest.

``checkpoint`` holds the last stream sequence applied; it is written in the same
transaction as the rows, so a projector killed mid-batch resumes exactly where the
committed rows end. Timestamps are UTC (``TIMESTAMP`` columns, no zone attached).
"""

from __future__ import annotations

from typing import Final

__all__ = ["BOOKKEEPING", "FACT_TABLES", "SCHEMA_VERSION", "STATE_TABLES", "TABLES", "Table"]

SCHEMA_VERSION: Final = 7
"""7: ``runs.tags`` (the run's tags, a JSON object); 5: a failed run's phases in flight
fold to `cancelled`; 4: the tamper columns of ``runs`` and ``run_states.screen``; 3: a
cancelled run's unsettled phases and items fold to `cancelled`. A file of another version
is rebuilt."""

_S, _I, _B, _F, _T, _X = "VARCHAR", "INTEGER", "BIGINT", "DOUBLE", "TIMESTAMP", "BLOB"
_NN = " NOT NULL"


class Table:
    """A table: its columns (name, SQL type) and the key that orders it canonically."""

    def __init__(self, name: str, columns: str, *, key: tuple[str, ...], unique: bool) -> None:
        self.name = name
        self.unique = unique
        """Whether ``key`` is a primary key (state tables, replaced by key)."""
        self.columns: tuple[tuple[str, str], ...] = tuple(
            (c.split(":")[0].strip(), c.split(":")[1].strip()) for c in columns.split(",")
        )
        self.key = key

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def ddl(self) -> str:
        cols = ", ".join(f"{c} {t}" for c, t in self.columns)
        if self.unique:
            cols += f", PRIMARY KEY ({', '.join(self.key)})"
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols})"


def _t(name: str, columns: str, *key: str) -> Table:
    return Table(name, columns, key=key, unique=True)


def _f(name: str, columns: str, *key: str) -> Table:
    # Fact tables carry no index: the checkpoint, not a constraint, keeps them exact.
    return Table(name, columns, key=key, unique=False)


STATE_TABLES: Final[tuple[Table, ...]] = (
    _t(
        "runs",
        f"run_id:{_S}{_NN}, pipeline:{_S}{_NN}, version:{_S}{_NN}, status:{_S}{_NN},"
        f"seed:{_B}{_NN}, input_digest:{_S}{_NN}, code_fingerprint:{_S}{_NN},"
        f"fingerprint:{_S}{_NN}, failed_phase:{_S}{_NN}, error_kind:{_S}, error_message:{_S},"
        f"resume_of:{_S}{_NN}, batch_id:{_S}{_NN}, requested_at:{_T}, started_at:{_T},"
        f"ended_at:{_T}, duration:{_F}, phases:{_I}{_NN}, phases_done:{_I}{_NN},"
        f"signals:{_I}{_NN}, head:{_S}{_NN}, first_stream_seq:{_B}{_NN},"
        f"last_stream_seq:{_B}{_NN}, tampered:BOOLEAN{_NN}, tampered_stream_seq:{_B},"
        f"tampered_problem:{_S}, tampered_message:{_S}, tags:{_S}{_NN}",
        "run_id",
    ),
    _t(
        "run_states",
        f"run_id:{_S}{_NN}, first_stream_seq:{_B}{_NN}, last_stream_seq:{_B}{_NN},"
        f"state:{_X}{_NN}, screen:{_X}",
        "run_id",
    ),
    _t(
        "phases",
        f"run_id:{_S}{_NN}, phase:{_S}{_NN}, position:{_I}{_NN}, pipeline:{_S}{_NN},"
        f"status:{_S}{_NN}, attempts:{_I}{_NN}, worker:{_S}{_NN}, items:{_I}, item_count:{_I},"
        f"duration:{_F}{_NN}, scheduled_at:{_T}, ended_at:{_T}, output_digest:{_S}{_NN},"
        f"artifact:{_S}{_NN}, error_kind:{_S}, error_message:{_S}, skip_reason:{_S}{_NN},"
        f"quarantined:{_S}{_NN}",
        "run_id",
        "phase",
    ),
)
"""One row per run or per phase: replaced whenever the run moves."""

FACT_TABLES: Final[tuple[Table, ...]] = (
    _f(
        "signals",
        f"stream_seq:{_B}{_NN}, run_id:{_S}{_NN}, pipeline:{_S}{_NN}, seq:{_I}{_NN},"
        f"kind:{_S}{_NN}, phase:{_S}{_NN}, item:{_I}, attempt:{_I}{_NN}, signal_at:{_T}{_NN},"
        f"hash:{_S}{_NN}",
        "stream_seq",
        "seq",
    ),
    _f(
        "checks",
        f"run_id:{_S}{_NN}, seq:{_I}{_NN}, stream_seq:{_B}{_NN}, pipeline:{_S}{_NN},"
        f"phase:{_S}{_NN}, item:{_I}, attempt:{_I}{_NN}, check_type:{_S}{_NN}, name:{_S}{_NN},"
        f"boundary:{_S}{_NN}, passed:BOOLEAN{_NN}, detail:{_S}{_NN}, signal_at:{_T}{_NN}",
        "run_id",
        "seq",
    ),
    _f(
        "metrics",
        f"run_id:{_S}{_NN}, seq:{_I}{_NN}, stream_seq:{_B}{_NN}, pipeline:{_S}{_NN},"
        f"phase:{_S}{_NN}, item:{_I}, attempt:{_I}{_NN}, outcome:{_S}{_NN},"
        f"duration:{_F}{_NN}, cpu_seconds:{_F}{_NN}, peak_rss_bytes:{_B}{_NN}, error_kind:{_S},"
        f"signal_at:{_T}{_NN}",
        "run_id",
        "seq",
    ),
    _f(
        "rejected",
        f"stream_seq:{_B}{_NN}, idx:{_I}{_NN}, last_stream_seq:{_B}{_NN}, subject:{_S}{_NN},"
        f"reason:{_S}{_NN}, size:{_I}{_NN}",
        "stream_seq",
        "idx",
    ),
)
"""One row per signal (or per message that could not be applied): appended only."""

TABLES: Final[tuple[Table, ...]] = STATE_TABLES + FACT_TABLES
"""Every table a rebuild drops and the state digest covers, in digest order."""

BOOKKEEPING: Final[tuple[str, ...]] = (
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    "CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY, stream_seq BIGINT NOT NULL)",
)
"""The schema version, the stream the tables were folded from, and the checkpoint."""
