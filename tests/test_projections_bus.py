"""The projector on JetStream: live following, the query service, restarts and SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.client.queries import ask
from sisas.errors import UnknownRun, UsageError
from sisas.loader import load_pipelines
from sisas.projections.projector import Projector
from sisas.projections.store import ProjectionStore
from sisas.services.host import running_services
from sisas.services.query import local_projector, projection_path
from tests.cli_process import SISAS, server_env, sisas, sisas_async
from tests.conftest import spawn_nats
from tests.runs import EXAMPLE, POINTS, append_runs, start, wait_end


@pytest.fixture
async def served(bus: Bus) -> AsyncIterator[Bus]:
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    async with running_services(bus, pipes, concurrency=3, projector=True):
        yield bus


async def test_a_finished_run_is_answered_over_nats_at_once(served: Bus) -> None:
    await start(served, "clustering", "q1", POINTS)
    _, signals = await wait_end(served, "q1")
    last = await served.log.last_seq()
    answer = await ask(served, "show", {"run_id": "q1"})
    assert answer.served_by == "projector"
    assert answer.as_of >= last  # read-your-writes: it waited until it had folded the end
    assert answer.result["run"]["status"] == "completed"
    assert answer.result["run"]["signals"] == len(signals)
    assert len(answer.result["checks"]) == sum(
        s.kind in ("contract_checked", "invariant_checked") for s in signals
    )
    manifest = (await ask(served, "manifest", {"run_id": "q1"})).result
    assert manifest["seed"] == 7
    assert manifest["fingerprint"] == signals[-1].body.fingerprint  # type: ignore[union-attr]
    seen: list[tuple[str, int, int]] = []
    rebuilt = await ask(served, "rebuild", on_progress=lambda *a: seen.append(a))
    assert rebuilt.result["equal"] is True
    assert rebuilt.result["stream_seq"] == last
    assert seen and seen[-1][0] == "rebuilding"
    with pytest.raises(UnknownRun):
        await ask(served, "show", {"run_id": "nope"})


async def test_bad_queries_get_an_error_answer_and_the_service_goes_on(served: Bus) -> None:
    for subject, payload in (
        ("sisas.query.show", b"\xff not json"),
        ("sisas.query.show", b'{"run": 1}'),
        ("sisas.query.drop_tables", b"{}"),
        ("sisas.query.runs", b'{"limit": "many"}'),
    ):
        reply = await served.nc.request(subject, payload, timeout=10)
        answer = msgspec.json.decode(reply.data)
        assert answer["ok"] is False
        assert answer["error"]["exit_code"] == 2
        assert answer["error"]["message"]
    ok = await ask(served, "runs", {"limit": 5})
    assert ok.served_by == "projector"


async def test_with_no_projector_running_the_query_folds_the_log_here(bus: Bus) -> None:
    await append_runs(bus, 12)
    answer = await ask(bus, "runs", {"status": "failed"})
    assert answer.served_by == "local"
    assert [r["run_id"] for r in answer.result] == ["run-0000010"]
    assert projection_path(bus.settings).exists()
    stats = (await ask(bus, "stats", {})).result
    assert stats["pipelines"][0]["runs"] == 12


async def test_thousands_of_runs_with_projector_restarts_match_a_rebuild(bus: Bus) -> None:
    """Projectors come and go while runs are appended; the end state equals a rebuild."""
    total = signals = 0
    for round_ in range(4):
        stop = asyncio.Event()
        async with local_projector(bus) as projector:
            projector.batch_size = 700 + 300 * round_  # batch boundaries move each round
            task = asyncio.create_task(projector.run(stop))
            signals += await append_runs(bus, 300, start_at=total)
            total += 300
            await asyncio.sleep(0.2 * round_)  # sometimes mid-catch-up, sometimes idle
            stop.set()
            await asyncio.wait_for(task, 30)
    async with local_projector(bus) as projector:
        await projector.catch_up()
        counts = projector.store.counts()
        assert counts["runs"] == total
        assert counts["signals"] == signals
        assert projector.store.checkpoint() == await bus.log.last_seq()
        assert counts["rejected"] == 0
        report = await projector.rebuild()
    assert report.equal, (report.before, report.after)


async def _progressed_past(bus: Bus, seq: int, last: int) -> int:
    """The projector's applied sequence once it is past ``seq`` (asked over NATS)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            reply = await bus.nc.request("sisas.query.status", b"{}", timeout=2)
        except Exception:  # not subscribed yet, or busy writing a batch
            await asyncio.sleep(0.01)
            continue
        applied = int(msgspec.json.decode(reply.data)["result"]["applied_seq"])
        if seq < applied < last:
            return applied
        assert applied < last, "the projector caught up before it could be killed"
        await asyncio.sleep(0.005)
    raise AssertionError("the projector made no progress")


def _applied(path: Path) -> int:
    store = ProjectionStore(path, lock_wait=30)
    try:
        return store.checkpoint()
    finally:
        store.close()


async def test_a_projector_killed_mid_batch_counts_nothing_twice(
    bus: Bus, settings: Settings
) -> None:
    signals = await append_runs(bus, 1500)
    last = await bus.log.last_seq()
    env = server_env(settings)
    command = [*SISAS, "projector", "--batch-size", "700"]
    killed_at = 0
    for pause in (0.0, 0.013, 0.031):
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            # Wait until this projector has committed a batch past the last kill, then
            # kill it a moment later: inside the next batch or between two.
            killed_at = await _progressed_past(bus, killed_at, last)
            await asyncio.sleep(pause)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    applied = _applied(projection_path(settings))
    assert 0 < applied < last, "the kills should land before the catch-up finished"
    async with local_projector(bus) as projector:
        await projector.catch_up()
        counts = projector.store.counts()
        assert counts["signals"] == signals
        distinct = projector.store.con.execute(
            "SELECT count(DISTINCT stream_seq) FROM signals"
        ).fetchone()
        assert distinct is not None and distinct[0] == last
        report = await projector.rebuild()
    assert report.equal


async def test_a_projection_is_rebuilt_when_the_log_is_a_different_one(
    bus: Bus, settings: Settings
) -> None:
    await append_runs(bus, 3)
    store = ProjectionStore(projection_path(settings))
    other = Projector(bus.log, store, identity="SISAS_LOG@another-time")
    await other.catch_up()
    store.close()
    async with local_projector(bus) as projector:  # the real identity differs: rebuilt
        await projector.catch_up()
        assert projector.store.counts()["runs"] == 3
        assert projector.store.meta("stream") == await bus.log.identity()


async def test_the_cli_lists_runs_as_documented_json(bus: Bus, settings: Settings) -> None:
    await append_runs(bus, 4)
    env = server_env(settings)
    out = sisas("runs", "--json", env=env)
    assert out.returncode == 0, out.stderr
    doc = msgspec.json.decode(out.stdout)
    assert [r["run_id"] for r in doc["runs"]] == [f"run-{i:07d}" for i in (3, 2, 1, 0)]
    missing = sisas("show", "run-9", env=env)
    assert missing.returncode == 2
    assert "sisas runs" in missing.stderr


async def test_an_artifact_listed_in_the_manifest_can_be_fetched(
    served: Bus, settings: Settings, tmp_path: Path
) -> None:
    await start(served, "clustering", "a1", POINTS)
    await wait_end(served, "a1")
    manifest = (await ask(served, "manifest", {"run_id": "a1"})).result
    load = next(p for p in manifest["phases"] if p["name"] == "load")
    env = server_env(settings)
    out = tmp_path / "load.json"
    fetched = sisas("artifact", load["artifact"]["digest"], "--out", str(out), env=env)
    assert fetched.returncode == 0
    assert b"values" in out.read_bytes()
    unknown = sisas("artifact", "sha256:" + "0" * 64, env=env)
    assert unknown.returncode == 2 and "no artifact" in unknown.stderr
    # the output's semantic digest, the one `outputs` and `show` display most, is not it
    assert load["output_digest"] != load["artifact"]["digest"]
    semantic = sisas("artifact", load["output_digest"], env=env)
    assert semantic.returncode == 2
    assert "semantic digest" in semantic.stderr and "artifact.digest" in semantic.stderr
    as_json = await sisas_async("manifest", "a1", "--json", env=env)  # answered from this loop
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["run_id"] == "a1"


async def test_an_answer_past_max_payload_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    """A server with a 64 KiB max_payload: a `runs` answer over it would be refused by the
    server and the asker would wait for ever; it gets an ``ok: false`` answer instead,
    and a smaller question still works."""
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 65536\n")
    server = spawn_nats(tmp_path / "nats", "-c", str(conf))
    try:
        settings = Settings(home=tmp_path / "home", nats_url=server.url, replicas=1, timeout=5.0)
        async with open_bus(settings) as bus:
            assert bus.nc.max_payload == 65536
            await append_runs(bus, 400)
            async with running_services(bus, {}, orchestrator=False, projector=True):
                with pytest.raises(UsageError) as err:
                    await ask(bus, "runs", {"limit": 400})
                assert "max_payload of 65,536" in str(err.value)
                assert "smaller --limit" in str(err.value)
                assert (await ask(bus, "runs", {"limit": 20})).served_by == "projector"
    finally:
        server.stop()
