"""`sisas replay verify` compares every table of the projection with what the log gives.

A run's rows in ``runs``, ``phases``, ``checks``, ``metrics``, ``signals`` and
``run_states`` are a function of its signals alone; verify derives them from the log
with the projector's own fold and compares per-run, per-table digests with the store's,
then names the table, the run and the rows (key and columns) that differ. Edits are made
through DuckDB in the projection file of a real nats-server's data folder.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import msgspec
import pytest

from bench.synthetic import synthetic_runs
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client.queries import ask
from sisas.client.verification import verify_log
from sisas.projections.digests import ExpectedProjection, live_digests
from sisas.projections.projector import Projector
from sisas.projections.schema import TABLES
from sisas.projections.store import ProjectionStore
from sisas.replay.verdicts import RunVerdict, VerifyReport
from sisas.services.query import QueryService, projection_path
from sisas.signals.names import log_subject, run_partition
from tests.cli_process import server_env, sisas_async
from tests.runs import append_runs, outsider_publishes

RUN = "run-0000001"

EDITS = {
    "runs": (
        "UPDATE runs SET status = CASE WHEN status = 'failed' THEN 'completed' "
        "ELSE 'failed' END WHERE run_id = $run",
        "status",
    ),
    "phases": (
        "UPDATE phases SET attempts = attempts + 5 WHERE run_id = $run AND position = 0",
        "attempts",
    ),
    "checks": (
        "UPDATE checks SET passed = NOT passed WHERE run_id = $run "
        "AND seq = (SELECT min(seq) FROM checks WHERE run_id = $run)",
        "passed",
    ),
    "metrics": (
        "UPDATE metrics SET duration = duration + 1 WHERE run_id = $run "
        "AND seq = (SELECT min(seq) FROM metrics WHERE run_id = $run)",
        "duration",
    ),
    "signals": (
        "UPDATE signals SET kind = 'run_cancelled' WHERE run_id = $run AND seq = 2",
        "kind",
    ),
    "run_states": (
        "UPDATE run_states SET first_stream_seq = first_stream_seq + 1 WHERE run_id = $run",
        "first_stream_seq",
    ),
}


def _edit(settings: Settings, sql: str) -> None:
    con = duckdb.connect(str(projection_path(settings)))
    try:
        con.execute(sql, {"run": RUN})
    finally:
        con.close()


def _by_run(report: VerifyReport) -> dict[str, RunVerdict]:
    return {v.run_id: v for v in report.verdicts}


async def _folded(bus: Bus, runs: int = 4) -> None:
    await append_runs(bus, runs)
    await ask(bus, "status")  # nothing serves: the local projector folds the log here


async def test_an_untouched_projection_is_equal_in_every_table(bus: Bus) -> None:
    await _folded(bus)
    report = await verify_log(bus, None)
    assert report.intact, report.first
    assert {v.projection for v in report.verdicts} == {"equal"}
    one = await verify_log(bus, RUN)
    assert one.intact and one.verdicts[0].projection == "equal"


@pytest.mark.parametrize("table", sorted(EDITS))
async def test_an_edited_row_in_any_table_is_named(
    bus: Bus, settings: Settings, table: str
) -> None:
    await _folded(bus)
    sql, column = EDITS[table]
    _edit(settings, sql)
    for run_id in (None, RUN):  # --all and one run
        report = await verify_log(bus, run_id)
        assert not report.intact
        verdicts = _by_run(report)
        bad = verdicts[RUN]
        assert bad.projection == "differs"
        assert bad.projection_tables == [table]
        assert [(r.table, r.change) for r in bad.projection_rows] == [(table, "differs")]
        assert [c.path for c in bad.projection_rows[0].columns] == [column]
        assert bad.findings[-1].problem == "projection_differs"
        assert table in bad.findings[-1].message
        assert all(v.projection == "equal" for k, v in verdicts.items() if k != RUN)


async def test_a_deleted_and_an_added_row_are_named(bus: Bus, settings: Settings) -> None:
    await _folded(bus)
    _edit(settings, "DELETE FROM signals WHERE run_id = $run AND seq = 3")
    _edit(
        settings,
        "INSERT INTO checks SELECT * REPLACE (seq + 1000 AS seq) FROM checks "
        "WHERE run_id = $run AND seq = (SELECT min(seq) FROM checks WHERE run_id = $run)",
    )
    bad = _by_run(await verify_log(bus, None))[RUN]
    assert bad.projection_tables == ["signals", "checks"]
    changes = {(r.table, r.change) for r in bad.projection_rows}
    assert changes == {("signals", "missing"), ("checks", "extra")}


async def test_the_cli_names_the_table_the_run_and_the_row(bus: Bus, settings: Settings) -> None:
    await _folded(bus)
    _edit(settings, EDITS["runs"][0])
    out = await sisas_async("replay", "verify", "--all", env=server_env(settings))
    assert out.returncode == 1, out.stdout + out.stderr
    assert RUN in out.stdout
    assert "projection runs" in out.stdout and "status" in out.stdout


async def test_a_projection_behind_the_log_is_not_flagged(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    await append_runs(bus, 3)
    store = ProjectionStore(tmp_path / "behind.duckdb")
    projector = Projector(bus.log, store, identity=await bus.log.identity())
    await projector.catch_up()
    service = QueryService(bus.nc, projector, freshness=0.05)  # answers, never catches up
    await service.start()
    try:
        await append_runs(bus, 2, start_at=3)
        report = await verify_log(bus, None)
        seen = {v.run_id: v.projection for v in report.verdicts}
        assert report.intact, report.first
        assert seen == {
            "run-0000000": "equal",
            "run-0000001": "equal",
            "run-0000002": "equal",
            "run-0000003": "not_checked",
            "run-0000004": "not_checked",
        }
    finally:
        await service.stop()
        store.close()


async def test_the_expected_rows_are_the_rows_a_projector_writes(bus: Bus) -> None:
    """The verifier's fold, digested without a database, equals the store's digests."""
    await append_runs(bus, 3)
    store = ProjectionStore(None)
    try:
        await Projector(bus.log, store).catch_up()
        records = [r async for r in bus.log.follow()]
        fold = ExpectedProjection(batch=7)  # batch boundaries do not matter
        try:
            want = fold.extend(records).digests()
        finally:
            fold.close()
        have = live_digests(store.con, sorted(want))
        assert want == have
        assert set(want["run-0000000"]) == {t.name for t in TABLES} - {"rejected"}
    finally:
        store.close()


async def test_verify_in_two_processes_gives_the_verdict_of_one(
    bus: Bus, settings: Settings
) -> None:
    """Runs split by a hash of their id across processes: the same report, findings,
    projection differences and order, whatever the number of jobs."""
    await _folded(bus, runs=9)
    url = settings.nats_url or ""
    await outsider_publishes(url, log_subject("synth", "run-0000004", "", "run_failed"), b"{")
    await outsider_publishes(url, "sisas.run.junk", b"not a run's subject")
    await ask(bus, "status")
    _edit(settings, EDITS["metrics"][0])
    one = await verify_log(bus, None, jobs=1)
    two = await verify_log(bus, None, jobs=2)
    three = await verify_log(bus, None, jobs=3)
    assert not one.intact
    assert msgspec.to_builtins(two) == msgspec.to_builtins(one)
    assert msgspec.json.encode(three) == msgspec.json.encode(one)
    bad = {v.run_id: v for v in one.verdicts if not v.intact}
    assert sorted(bad) == [RUN, "run-0000004"]
    cli = await sisas_async(
        "replay", "verify", "--all", "--jobs", "2", "--json", env=server_env(settings)
    )
    assert cli.returncode == 1
    assert msgspec.json.decode(cli.stdout) == msgspec.to_builtins(one)


@pytest.mark.parametrize("reader", [True, False], ids=["reader", "others"])
async def test_verify_in_processes_when_every_run_is_in_one_share(bus: Bus, reader: bool) -> None:
    """The process that reads the log verifies one run in three (with two jobs) and hands
    the others' messages on: a log whose runs are all its own, or all the other's, gives
    the report of one job."""
    share = 0 if reader else 1
    runs = [r for r in synthetic_runs(40) if (run_partition(r[0].run_id, 3) + 1) // 2 == share]
    for signals in runs[:6]:
        await bus.log.append(signals, expected_last_seq=0)
    one = await verify_log(bus, None, jobs=1, projection=False)
    two = await verify_log(bus, None, jobs=2, projection=False)
    assert one.intact and one.runs == 6
    assert msgspec.to_builtins(two) == msgspec.to_builtins(one)
