"""Questions the projection answers: runs, one run, its manifest, phase statistics.

Each query takes a DuckDB connection and returns plain JSON-ready data whose fields are
documented in ``docs/cli.md``; the same functions serve the query service over NATS and
the CLI when it folds the log itself. Requests are msgspec Structs, so a malformed
request is refused with the field that is wrong.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb
import msgspec

from sisas.errors import UnknownRun, UsageError
from sisas.handlers.state import state_digest
from sisas.projections import digests
from sisas.projections.rows import decode_screen, decode_state

__all__ = [
    "MANIFEST_VERSION",
    "RunQuery",
    "RunsQuery",
    "StatesQuery",
    "StatsQuery",
    "TablesQuery",
    "artifact_location",
    "manifest",
    "parse_since",
    "run_detail",
    "runs",
    "states",
    "stats",
    "tables",
]

MANIFEST_VERSION = 1

Status = Literal["requested", "running", "completed", "failed", "cancelled"]


class RunsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pipeline: str = ""
    status: Status | None = None
    since: datetime | None = None
    limit: int = 100
    tampered: bool | None = None
    """True: only runs marked tampered; False: only the others."""
    tags: dict[str, str] = {}
    """Only runs that carry every one of these tags (key and value)."""


class RunQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run_id: str


class StatesQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run_ids: list[str] = []
    after: str = ""
    limit: int = 2000
    full: bool = False


class TablesQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run_ids: list[str] = []
    after: str = ""
    limit: int = 500
    rows_of: str = ""
    """With ``table``: the rows of this run in that table instead of digests."""
    table: str = ""
    offset: int = 0


class StatsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pipeline: str = ""
    tags: dict[str, str] = {}
    """Only runs that carry every one of these tags."""


def _tagged(tags: dict[str, str]) -> tuple[list[str], list[object]]:
    """SQL conditions on ``runs.tags`` holding every one of ``tags``, and their args."""
    where: list[str] = []
    args: list[object] = []
    for key, value in sorted(tags.items()):
        where.append("json_extract_string(tags, ?) = ?")
        args.extend([f'$."{key}"', value])
    return where, args


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """``2026-11-01``, ``2026-11-01T12:00:00Z`` or a span back from ``now`` (``30m``, ``2d``)."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a time (2026-11-01, 2026-11-01T12:00:00Z) "
            "nor a span back from now (30m, 6h, 2d, 1w)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: object) -> str | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return None


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or []]
    out = []
    for row in cur.fetchall():
        item = dict(zip(names, row, strict=True))
        for k, v in item.items():
            if isinstance(v, datetime):
                item[k] = _iso(v)
        if isinstance(item.get("tags"), str):
            item["tags"] = msgspec.json.decode(item["tags"])
        out.append(item)
    return out


_RUN_COLUMNS = """
    run_id, pipeline, version, status, requested_at, started_at, ended_at, duration,
    failed_phase, error_kind, error_message, fingerprint, code_fingerprint, seed,
    input_digest, resume_of, batch_id, phases, phases_done, signals,
    tampered, tampered_stream_seq, tampered_problem, tampered_message, tags
"""


def runs(con: duckdb.DuckDBPyConnection, q: RunsQuery) -> list[dict[str, Any]]:
    """Runs, newest first, filtered by pipeline, status, start time and tampering."""
    # Trigger evaluation chains are no runs; a chain whose first signal was forged is
    # still listed (as new, tampered).
    where: list[str] = ["(status <> 'new' OR tampered)"]
    args: list[object] = []
    if q.tampered is not None:
        where.append("tampered" if q.tampered else "NOT tampered")
    if q.pipeline:
        where.append("pipeline = ?")
        args.append(q.pipeline)
    if q.status:
        where.append("status = ?")
        args.append(q.status)
    if q.since is not None:
        where.append("coalesce(started_at, requested_at) >= ?")
        args.append(q.since.astimezone(UTC).replace(tzinfo=None))
    tagged, tag_args = _tagged(q.tags)
    where.extend(tagged)
    args.extend(tag_args)
    cur = con.execute(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)} "
        "ORDER BY coalesce(started_at, requested_at) DESC NULLS LAST, run_id DESC LIMIT ?",
        [*args, max(q.limit, 1)],
    )
    return _dicts(cur)


def _one_run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    found = _dicts(con.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", [run_id]))
    if not found:
        near = [
            r[0]
            for r in con.execute(
                "SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY run_id LIMIT 5",
                [f"%{run_id}%"],
            ).fetchall()
        ]
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise UnknownRun(f"no run {run_id!r} in the projection{hint}; `sisas runs` lists them")
    return found[0]


def run_detail(con: duckdb.DuckDBPyConnection, q: RunQuery) -> dict[str, Any]:
    """A run, its phases, every contract and invariant check, and its links."""
    run = _one_run(con, q.run_id)
    phases = _dicts(
        con.execute(
            """SELECT phase AS name, status, attempts, duration,
                      epoch(ended_at) - epoch(scheduled_at) AS wall,
                      output_digest, artifact, error_kind, error_message, skip_reason,
                      quarantined,
                      items, item_count, worker, scheduled_at, ended_at
               FROM phases WHERE run_id = ? ORDER BY position""",
            [q.run_id],
        )
    )
    checks = _dicts(
        con.execute(
            """SELECT seq, phase, item, attempt, check_type AS type, name, boundary, passed,
                      detail, signal_at AS at
               FROM checks WHERE run_id = ? ORDER BY seq""",
            [q.run_id],
        )
    )
    for c in checks:
        c["detail"] = json.loads(c["detail"])
    resumed_by = [
        r[0]
        for r in con.execute(
            "SELECT run_id FROM runs WHERE resume_of = ? ORDER BY run_id", [q.run_id]
        ).fetchall()
    ]
    batch_runs = 0
    if run["batch_id"]:
        row = con.execute(
            "SELECT count(*) FROM runs WHERE batch_id = ?", [run["batch_id"]]
        ).fetchone()
        batch_runs = int(row[0]) if row else 0
    return {
        "run": run,
        "phases": phases,
        "checks": checks,
        "links": {
            "resumed_from": run["resume_of"] or None,
            "resumed_by": resumed_by,
            "batch_id": run["batch_id"] or None,
            "batch_runs": batch_runs,
        },
    }


def artifact_location(digest: str) -> dict[str, str] | None:
    if not digest:
        return None
    return {
        "digest": digest,
        "uri": f"sisas://artifacts/{digest}",
        "fetch": f"sisas artifact {digest} --out FILE",
    }


def manifest(con: duckdb.DuckDBPyConnection, q: RunQuery) -> dict[str, Any]:
    """The run manifest: what ran (code and contracts), on what, how, and what came out."""
    run = _one_run(con, q.run_id)
    row = con.execute(
        "SELECT state, screen, first_stream_seq, last_stream_seq FROM run_states WHERE run_id = ?",
        [q.run_id],
    ).fetchone()
    assert row is not None  # written with the runs row, in the same transaction
    tracked = decode_screen(bytes(row[0]), None if row[1] is None else bytes(row[1]), *row[2:])
    state, tamper = tracked.view, tracked.tamper  # what is shown, as runs and phases
    plan = state.plan
    detail = run_detail(con, q)
    by_phase: dict[str, dict[str, int]] = {}
    for c in detail["checks"]:
        counts = by_phase.setdefault(
            c["phase"],
            {
                "contracts_passed": 0,
                "contracts_failed": 0,
                "invariants_passed": 0,
                "invariants_failed": 0,
            },
        )
        key = ("contracts_" if c["type"] == "contract" else "invariants_") + (
            "passed" if c["passed"] else "failed"
        )
        counts[key] += 1
    attempts = {
        r[0]: (int(r[1]), int(r[2]))
        for r in con.execute(
            """SELECT phase, count(*), count(*) FILTER (WHERE attempt > 0)
               FROM metrics WHERE run_id = ? GROUP BY phase""",
            [q.run_id],
        ).fetchall()
    }
    phases = []
    for p in detail["phases"]:
        name = p["name"]
        ps = state.phase(name)
        pp = plan.phase(name) if plan else None
        ran, retried = attempts.get(name, (0, 0))
        phases.append(
            {
                "name": name,
                "depends_on": list(pp.depends_on) if pp else [],
                "status": p["status"],
                "attempts": ran,
                "retries": retried,
                "duration": p["duration"],
                "wall": p["wall"],
                "items": p["items"],
                "item_count": p["item_count"],
                "inputs": dict(ps.inputs),
                "output_digest": p["output_digest"] or None,
                "artifact": artifact_location(p["artifact"]),
                "error": {"kind": p["error_kind"], "message": p["error_message"]}
                if p["error_kind"]
                else None,
                "skip_reason": p["skip_reason"] or None,
                "checks": by_phase.get(
                    name,
                    {
                        "contracts_passed": 0,
                        "contracts_failed": 0,
                        "invariants_passed": 0,
                        "invariants_failed": 0,
                    },
                ),
            }
        )
    checks = detail["checks"]
    statuses = [p["status"] for p in phases]
    return {
        "manifest_version": MANIFEST_VERSION,
        "run_id": run["run_id"],
        "pipeline": run["pipeline"],
        "version": run["version"],
        "code_fingerprint": run["code_fingerprint"],
        "contracts": {p.name: list(p.contracts) for p in plan.phases} if plan else {},
        "invariants": {p.name: list(p.invariants) for p in plan.phases} if plan else {},
        "input_contract": plan.input_contract if plan else "",
        "environment": msgspec.to_builtins(plan.environment) if plan and plan.environment else None,
        "status": run["status"],
        "fingerprint": run["fingerprint"] or None,
        "seed": run["seed"],
        "input_digest": run["input_digest"] or None,
        "config": dict(state.config),
        "requested_at": run["requested_at"],
        "started_at": run["started_at"],
        "ended_at": run["ended_at"],
        "duration": run["duration"],
        "failed_phase": run["failed_phase"] or None,
        "error": {"kind": run["error_kind"], "message": run["error_message"]}
        if run["error_kind"]
        else None,
        "resume_of": run["resume_of"] or None,
        "batch_id": run["batch_id"] or None,
        "tampered": {
            "stream_seq": tamper.stream_seq,
            "problem": tamper.problem,
            "message": tamper.message,
        }
        if tamper
        else None,
        "phases": phases,
        "counters": {
            "signals": run["signals"],
            "phases": len(phases),
            "phases_completed": statuses.count("completed"),
            "phases_failed": statuses.count("failed") + statuses.count("timed_out"),
            "phases_skipped": statuses.count("skipped"),
            "attempts": sum(p["attempts"] for p in phases),
            "retries": sum(p["retries"] for p in phases),
            "contract_checks": sum(1 for c in checks if c["type"] == "contract"),
            "contract_failures": sum(
                1 for c in checks if c["type"] == "contract" and not c["passed"]
            ),
            "invariant_checks": sum(1 for c in checks if c["type"] == "invariant"),
            "invariant_failures": sum(
                1 for c in checks if c["type"] == "invariant" and not c["passed"]
            ),
        },
        "outputs": {p["name"]: p["output_digest"] for p in phases if p["output_digest"]},
        "chain": {
            "signals": run["signals"],
            "head": tracked.state.head.hash,
            "first_stream_seq": tracked.first_stream_seq,
            "last_stream_seq": tracked.last_stream_seq,
        },
    }


def stats(con: duckdb.DuckDBPyConnection, q: StatsQuery) -> dict[str, Any]:
    """Per pipeline and phase: duration percentiles, success and retry rates, and
    contract and invariant failure counts. Runs marked tampered are counted apart
    (``tampered``) and left out of every other count and percentile."""
    tagged, tag_args = _tagged(q.tags)
    conds = ["pipeline = ?"] if q.pipeline else []
    args: list[object] = [q.pipeline] if q.pipeline else []
    only = f"WHERE {' AND '.join(conds + tagged)}" if conds or tagged else ""
    pipelines = _dicts(
        con.execute(
            f"""SELECT pipeline, count(*) AS runs,
                   count(*) FILTER (WHERE status = 'completed' AND NOT tampered) AS completed,
                   count(*) FILTER (WHERE status = 'failed' AND NOT tampered) AS failed,
                   count(*) FILTER (WHERE status = 'cancelled' AND NOT tampered) AS cancelled,
                   count(*) FILTER (WHERE status IN ('requested', 'running') AND NOT tampered)
                       AS active,
                   count(*) FILTER (WHERE tampered) AS tampered,
                   quantile_cont(duration, 0.5) FILTER (WHERE NOT tampered) AS duration_p50,
                   quantile_cont(duration, 0.95) FILTER (WHERE NOT tampered) AS duration_p95,
                   quantile_cont(duration, 0.99) FILTER (WHERE NOT tampered) AS duration_p99
                FROM runs {only} GROUP BY pipeline ORDER BY pipeline""",
            args + tag_args,
        )
    )
    # Phases, attempts and checks of tampered runs are not counted: the run's own
    # history cannot be told from the forgery's consequences.
    clean = "run_id NOT IN (SELECT run_id FROM runs WHERE tampered)"
    if tagged:
        clean += f" AND run_id IN (SELECT run_id FROM runs WHERE {' AND '.join(tagged)})"
        args += tag_args
    only = f"WHERE pipeline = ? AND {clean}" if q.pipeline else f"WHERE {clean}"
    phases = _dicts(
        con.execute(
            f"""
            WITH outcomes AS (
                SELECT pipeline, phase, min(position) AS position,
                       count(*) FILTER (WHERE status NOT IN ('pending', 'skipped')) AS runs,
                       count(*) FILTER (WHERE status = 'completed') AS completed,
                       count(*) FILTER (WHERE status IN ('failed', 'timed_out')) AS failed,
                       count(*) FILTER (WHERE status = 'skipped') AS skipped
                FROM phases {only} GROUP BY pipeline, phase
            ), executions AS (
                SELECT pipeline, phase, run_id, item, max(attempt) AS last_attempt,
                       count(*) AS attempts
                FROM metrics {only} GROUP BY pipeline, phase, run_id, item
            ), retries AS (
                SELECT pipeline, phase, count(*) AS executions, sum(attempts) AS attempts,
                       count(*) FILTER (WHERE last_attempt > 0) AS retried
                FROM executions GROUP BY pipeline, phase
            ), durations AS (
                SELECT pipeline, phase,
                       quantile_cont(duration, 0.5) AS p50,
                       quantile_cont(duration, 0.95) AS p95,
                       quantile_cont(duration, 0.99) AS p99
                FROM metrics {only} AND outcome = 'completed'
                GROUP BY pipeline, phase
            ), failures AS (
                SELECT pipeline, phase,
                       count(*) FILTER (WHERE check_type = 'contract') AS contract_checks,
                       count(*) FILTER (WHERE check_type = 'contract' AND NOT passed)
                           AS contract_failures,
                       count(*) FILTER (WHERE check_type = 'invariant') AS invariant_checks,
                       count(*) FILTER (WHERE check_type = 'invariant' AND NOT passed)
                           AS invariant_failures
                FROM checks {only} GROUP BY pipeline, phase
            )
            SELECT o.pipeline, o.phase, o.runs, o.completed, o.failed, o.skipped,
                   CASE WHEN o.completed + o.failed > 0
                        THEN o.completed / (o.completed + o.failed) END AS success_rate,
                   coalesce(r.executions, 0) AS executions,
                   coalesce(r.attempts, 0) AS attempts,
                   CASE WHEN r.executions > 0 THEN r.retried / r.executions END AS retry_rate,
                   d.p50 AS duration_p50, d.p95 AS duration_p95, d.p99 AS duration_p99,
                   coalesce(f.contract_checks, 0) AS contract_checks,
                   coalesce(f.contract_failures, 0) AS contract_failures,
                   coalesce(f.invariant_checks, 0) AS invariant_checks,
                   coalesce(f.invariant_failures, 0) AS invariant_failures
            FROM outcomes o
            LEFT JOIN retries r USING (pipeline, phase)
            LEFT JOIN durations d USING (pipeline, phase)
            LEFT JOIN failures f USING (pipeline, phase)
            ORDER BY o.pipeline, o.position, o.phase
            """,
            args * 4,
        )
    )
    for p in phases:
        for k in ("success_rate", "retry_rate"):
            if p[k] is not None:
                p[k] = float(p[k])
    return {"pipelines": pipelines, "phases": phases}


def states(con: duckdb.DuckDBPyConnection, q: StatesQuery) -> dict[str, Any]:
    """Each run's state digest (and, with ``full``, the state): for ``run_ids``, or a page
    of every run after ``after`` in run-id order (``next`` is where the next page starts,
    empty at the end). Replay compares these with the state it refolds from the log."""
    limit = max(1, min(q.limit, 10_000))
    if q.run_ids:
        rows = con.execute(
            "SELECT run_id, state FROM run_states WHERE list_contains(?, run_id) ORDER BY run_id",
            [q.run_ids],
        ).fetchall()
        nxt = ""
    else:
        rows = con.execute(
            "SELECT run_id, state FROM run_states WHERE run_id > ? ORDER BY run_id LIMIT ?",
            [q.after, limit],
        ).fetchall()
        nxt = rows[-1][0] if len(rows) == limit else ""
    out = []
    for run_id, blob in rows:
        state = decode_state(bytes(blob))
        entry: dict[str, Any] = {"run_id": run_id, "digest": state_digest(state)}
        if q.full:
            entry["state"] = json.loads(bytes(blob))
        out.append(entry)
    return {"states": out, "next": nxt}


def tables(con: duckdb.DuckDBPyConnection, q: TablesQuery) -> dict[str, Any]:
    """Each run's digest in every table (:mod:`sisas.projections.digests`) and where its
    signals end: for ``run_ids``, or a page of every run after ``after`` in run-id order
    (``next`` starts the next page, empty at the end). With ``rows_of`` and ``table``, a
    page of that run's rows in that table instead (``next``: the offset of the next
    page, 0 at the end). Replay compares these with the rows it derives from the log."""
    limit = max(1, min(q.limit, 2_000))
    if q.rows_of:
        table = digests.BY_NAME.get(q.table)
        if table is None:
            raise UsageError(f"no table {q.table!r}: one of {', '.join(digests.BY_NAME)}")
        page = digests.live_rows(con, q.rows_of, q.table, offset=q.offset, limit=limit)
        more = len(page) == limit
        return {
            "rows": [digests.shown(table, r) for r in page],
            "next": q.offset + limit if more else 0,
        }
    if q.run_ids:
        found = con.execute(
            "SELECT run_id, last_stream_seq FROM run_states WHERE list_contains(?, run_id) "
            "ORDER BY run_id",
            [q.run_ids],
        ).fetchall()
        nxt = ""
    else:
        found = con.execute(
            "SELECT run_id, last_stream_seq FROM run_states WHERE run_id > ? "
            "ORDER BY run_id LIMIT ?",
            [q.after, limit],
        ).fetchall()
        nxt = found[-1][0] if len(found) == limit else ""
    wanted = sorted({*(r[0] for r in found), *q.run_ids})
    sums = digests.live_digests(con, wanted)
    last = {r[0]: r[1] for r in found}
    return {
        "runs": [
            {"run_id": rid, "last_stream_seq": last.get(rid, 0), "tables": sums.get(rid, {})}
            for rid in wanted
        ],
        "next": nxt,
    }
