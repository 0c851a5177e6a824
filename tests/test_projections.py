"""The DuckDB projection on the in-memory log: the fold, the digest, rejects, queries.

The same projector runs on JetStream in ``test_projections_bus.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.synthetic import synthetic_runs
from examples.clustering import pipeline as clustering
from sisas.bus.memory_log import MemoryLog
from sisas.errors import ProjectionError, UnknownRun
from sisas.handlers.local import LocalRun
from sisas.handlers.state import fold
from sisas.projections import queries as q
from sisas.projections.projector import Projector
from sisas.projections.rows import decode_state
from sisas.projections.store import Batch, ProjectionStore
from sisas.services.query import answer
from sisas.signals import StoredSignal, encode_signal
from tests.runs import AT, POINTS


async def synthetic_log(runs: int = 60) -> MemoryLog:
    log = MemoryLog()
    for signals in synthetic_runs(runs):
        await log.append(signals, expected_last_seq=0)
    return log


async def signal_count(log: MemoryLog) -> int:
    """Signals in the log (a commit holds several; a corrupt message counts none)."""
    return sum([isinstance(r, StoredSignal) async for r in log.follow()])


async def project(log: MemoryLog, path: Path | None = None, **kw: int) -> ProjectionStore:
    store = ProjectionStore(path)
    await Projector(log, store, identity="mem", **kw).catch_up()  # type: ignore[arg-type]
    return store


async def test_the_digest_does_not_depend_on_batch_boundaries_or_cache_size() -> None:
    log = await synthetic_log(20)
    digests = set()
    for batch_size, cache in ((5_000, 10_000), (5, 10_000), (7, 1), (333, 3)):
        store = await project(log, batch_size=batch_size, cache_runs=cache)
        digests.add(store.digest())
        assert store.counts()["signals"] == await signal_count(log)
        assert store.checkpoint() == await log.last_seq()
        store.close()
    assert len(digests) == 1


class RecordingStore(ProjectionStore):
    """A store that keeps every batch it wrote."""

    def __init__(self) -> None:
        super().__init__(None)
        self.written: list[Batch] = []

    def write(self, batch: Batch) -> None:
        super().write(batch)
        self.written.append(batch)


async def test_a_batch_replaces_the_rows_of_runs_stored_before_and_inserts_new_ones() -> None:
    log = MemoryLog()
    runs = list(synthetic_runs(6))
    last = [0] * len(runs)
    for at in range(0, max(map(len, runs)), 4):  # the runs interleaved, 4 signals a message
        for i, signals in enumerate(runs):
            if signals[at : at + 4]:
                appended = await log.append(signals[at : at + 4], expected_last_seq=last[i])
                last[i] = appended.last_seq
    store = RecordingStore()
    # batches of 7 records: every run spans several; a cache of one run: read back
    await Projector(log, store, identity="mem", batch_size=7, cache_runs=1).catch_up()  # type: ignore[arg-type]
    stored: set[str] = set()
    for batch in store.written:
        assert batch.fresh == set(batch.states) - stored  # nothing of theirs to delete
        stored |= set(batch.states)
    assert len(stored) == 6
    assert any(set(batch.states) - batch.fresh for batch in store.written)  # some replaced
    counts = store.counts()
    assert counts["runs"] == counts["run_states"] == 6
    assert counts["phases"] == 6 * 5  # one row per phase of each run, not one per batch
    whole = await project(log)
    assert store.digest() == whole.digest()
    store.close()
    whole.close()


async def test_restarts_resume_from_the_checkpoint_and_count_nothing_twice(
    tmp_path: Path,
) -> None:
    log = MemoryLog()
    path = tmp_path / "p.duckdb"
    batches = list(synthetic_runs(90))
    for i in range(0, 90, 30):  # the log grows between restarts of the projector
        for signals in batches[i : i + 30]:
            await log.append(signals, expected_last_seq=0)
        store = await project(log, path, batch_size=50)
        assert store.checkpoint() == await log.last_seq()
        store.close()
    store = ProjectionStore(path)
    live = store.digest()
    counts = store.counts()
    assert counts["signals"] == await signal_count(log)
    assert counts["runs"] == 90
    report = await Projector(log, store, identity="mem").rebuild()
    assert report.before == live == report.after
    store.close()


async def test_the_projected_state_is_the_orchestrators_state() -> None:
    """One meaning of each signal: the stored fold equals the orchestrator's own."""
    log = MemoryLog()
    local = LocalRun(clustering, "r1", at=AT, clock=time.perf_counter)
    local.start(POINTS, seed=3, config={"clean.flaky": True})
    local.run()
    await log.append(local.signals, expected_last_seq=0)
    store = await project(log, batch_size=17)
    row = store.con.execute("SELECT state FROM run_states WHERE run_id = 'r1'").fetchone()
    assert row is not None
    assert decode_state(bytes(row[0])) == local.state == fold(local.signals)
    store.close()


async def test_bad_messages_are_rejected_with_their_sequence_and_reason() -> None:
    log = await synthetic_log(3)
    good = next(iter(synthetic_runs(1, start=10)))
    log.inject_raw("sisas.run.synth.run-x._.run_requested", b"{not json")
    tampered = encode_signal(good[0]).replace(b'"seed":10', b'"seed":11')
    log.inject_raw("sisas.run.synth.run-0000010._.run_requested", tampered)
    # a valid signal that does not extend its run's chain (its predecessor is missing)
    await log.append(good[1:2], expected_last_seq=5)
    after = next(iter(synthetic_runs(1, start=20)))
    await log.append(after, expected_last_seq=0)
    store = await project(log)
    rejected = store.con.execute(
        "SELECT stream_seq, reason FROM rejected ORDER BY stream_seq"
    ).fetchall()
    assert [r[0] for r in rejected] == [4, 5, 6]
    assert "not JSON" in rejected[0][1]
    assert "hash" in rejected[1][1] or "canonical" in rejected[1][1]
    assert "does not extend its run's chain" in rejected[2][1]
    statuses = dict(store.con.execute("SELECT run_id, status FROM runs").fetchall())
    assert statuses["run-0000020"] == "completed"  # the projector went on
    assert "run-0000010" not in statuses
    store.close()


async def test_queries_answer_with_the_documented_fields() -> None:
    log = await synthetic_log(30)
    store = await project(log)
    con = store.con
    runs = q.runs(con, q.RunsQuery())
    assert len(runs) == 30
    assert runs[0]["run_id"] == "run-0000029"  # newest first
    failed = q.runs(con, q.RunsQuery(status="failed"))
    assert {r["run_id"] for r in failed} == {"run-0000010", "run-0000021"}
    assert all(r["failed_phase"] == "p2" for r in failed)
    since = q.parse_since("2026-11-01T00:00:25Z", AT)
    assert {r["run_id"] for r in q.runs(con, q.RunsQuery(since=since))} == {
        f"run-{i:07d}" for i in range(25, 30)
    }
    assert q.runs(con, q.RunsQuery(pipeline="other")) == []

    detail = q.run_detail(con, q.RunQuery(run_id="run-0000010"))
    assert detail["run"]["status"] == "failed"
    assert detail["run"]["error_kind"] == "ContractViolation"
    bad = [c for c in detail["checks"] if not c["passed"]]
    assert bad[0]["detail"]["violations"][0]["path"] == "rows[3].value"
    assert [p["status"] for p in detail["phases"]] == [
        "completed",
        "completed",
        "failed",
        "pending",
        "pending",
    ]

    m = q.manifest(con, q.RunQuery(run_id="run-0000003"))
    assert m["status"] == "completed"
    assert m["phases"][1]["attempts"] == 2 and m["phases"][1]["retries"] == 1
    assert m["counters"]["retries"] == 1
    assert m["counters"]["contract_checks"] == 10
    assert m["chain"]["signals"] == 33
    assert m["phases"][0]["artifact"]["digest"].startswith("sha256:")

    s = q.stats(con, q.StatsQuery())
    assert s["pipelines"][0]["runs"] == 30
    p1 = next(p for p in s["phases"] if p["phase"] == "p1")
    retried = sum(1 for i in range(30) if i % 7 == 3)
    assert p1["retry_rate"] == pytest.approx(retried / 30)
    p2 = next(p for p in s["phases"] if p["phase"] == "p2")
    assert p2["contract_failures"] == 2
    assert p2["success_rate"] == pytest.approx(28 / 30)
    assert p2["duration_p50"] <= p2["duration_p95"] <= p2["duration_p99"]

    with pytest.raises(UnknownRun, match="run-00000"):
        q.run_detail(con, q.RunQuery(run_id="run-0000"))
    store.close()


async def test_a_projection_of_another_log_is_rebuilt_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "p.duckdb"
    first = await synthetic_log(5)
    store = await project(first, path)
    store.close()
    other = MemoryLog()
    for signals in synthetic_runs(2, start=100):
        await other.append(signals, expected_last_seq=0)
    store = ProjectionStore(path)
    await Projector(other, store, identity="other").catch_up()
    assert {r[0] for r in store.con.execute("SELECT run_id FROM runs").fetchall()} == {
        "run-0000100",
        "run-0000101",
    }
    store.close()


async def test_a_duckdb_failure_is_a_projection_error_naming_the_fix() -> None:
    log = await synthetic_log(2)
    store = await project(log)
    store.con.execute("DROP TABLE runs")  # damaged behind the projector's back
    projector = Projector(log, store, identity="mem")

    async def report(*_: object) -> None:
        return None

    with pytest.raises(ProjectionError, match="projections rebuild"):
        await answer(projector, "runs", b"{}", report=report, freshness=0)
    with pytest.raises(ProjectionError, match="projections rebuild"):
        store.digest()
    store.close()
