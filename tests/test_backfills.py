"""Backfills: one run per partition, never more running at once than the backfill's limit
(measured from the log), a second call starts nothing that completed, a failed
partition runs again under a new run id, and two drivers of one backfill never start a
partition twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client import Client
from sisas.client.backfills import drive_backfill, plan_backfill, read_backfill
from sisas.client.verification import verify_log
from sisas.errors import UsageError
from sisas.handlers.backfills import (
    BackfillState,
    decide_next,
    every_cron,
    evolve_backfill,
    listed_partitions,
    partition_input,
    time_windows,
)
from sisas.handlers.schedules import Schedule, tick_seed
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.signals import (
    BackfillFinished,
    BackfillRequested,
    PartitionLaunched,
    PartitionSkipped,
    StoredSignal,
)
from sisas.signals.kinds import ENDING_KINDS
from tests.cli_process import server_env, sisas_async
from tests.runs import TEST_PIPES

UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


# -- pure -------------------------------------------------------------------------------


def test_every_names_a_cron_expression_or_says_the_forms() -> None:
    assert every_cron("1h", UTC_ZONE) == "0 * * * *"
    assert every_cron("6h", UTC_ZONE) == "0 */6 * * *"
    assert every_cron("15m", UTC_ZONE) == "*/15 * * * *"
    assert every_cron("1d", UTC_ZONE) == "0 0 * * *"
    assert every_cron("30 2 * * *", UTC_ZONE) == "30 2 * * *"
    with pytest.raises(UsageError, match="hours dividing 24"):
        every_cron("7h", UTC_ZONE)
    with pytest.raises(UsageError, match="not a cron expression"):
        every_cron("hourly", UTC_ZONE)


def test_time_windows_are_whole_windows_in_the_zone_across_a_dst_change() -> None:
    hours = time_windows(
        "0 * * * *",
        UTC_ZONE,
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert len(hours) == 24
    assert hours[0].key == "2026-01-01T00:00:00+00:00"
    assert hours[-1].end == "2026-01-02T00:00:00+00:00"
    paris = ZoneInfo("Europe/Paris")  # 2026-03-29: the night has 23 hours there
    days = time_windows(
        "0 0 * * *",
        paris,
        datetime(2026, 3, 28, tzinfo=paris),
        datetime(2026, 3, 31, 12, tzinfo=paris),
    )
    assert [d.key for d in days] == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ]
    with pytest.raises(UsageError, match="no whole window"):
        time_windows(
            "0 0 * * *",
            UTC_ZONE,
            datetime(2026, 1, 1, 1, tzinfo=UTC),
            datetime(2026, 1, 1, 23, tzinfo=UTC),
        )


def test_listed_partitions_refuse_repeats_and_empty_keys() -> None:
    assert [p.key for p in listed_partitions(["eu", " us "])] == ["eu", "us"]
    with pytest.raises(UsageError, match="listed twice"):
        listed_partitions(["eu", "eu"])
    with pytest.raises(UsageError, match="no empty keys"):
        listed_partitions(["eu", ""])


def test_decisions_skip_completed_follow_running_and_hold_the_limit() -> None:
    req = BackfillRequested(
        backfill_id="bf-x",
        pipeline="p",
        round=1,
        partitions=["a", "b", "c"],
        reason="",
        max_concurrent=1,
    )
    state = evolve_backfill(BackfillState(), req)
    first = decide_next(state, {})
    assert isinstance(first, PartitionLaunched) and first.partition == "a" and first.attempt == 1
    state = evolve_backfill(state, first)
    assert decide_next(state, {}) is None  # one run not ended: the limit holds
    second = decide_next(state, {first.run_id: "failed"})
    assert isinstance(second, PartitionLaunched) and second.partition == "b"
    state = evolve_backfill(state, second)
    ended = {first.run_id: "failed", second.run_id: "completed"}
    third = decide_next(state, ended)
    assert isinstance(third, PartitionLaunched)
    state = evolve_backfill(state, third)
    ended[third.run_id] = "completed"
    done = decide_next(state, ended)
    assert isinstance(done, BackfillFinished)
    assert (done.completed, done.failed, done.failed_partitions) == (2, 1, ["a"])
    state = evolve_backfill(state, done)
    again = evolve_backfill(state, msgspec.structs.replace(req, round=2))
    for key in ("b", "c"):  # completed: skipped first, taking no slot
        skip = decide_next(again, ended)
        assert isinstance(skip, PartitionSkipped) and skip.partition == key
        assert skip.because == "completed"
        again = evolve_backfill(again, skip)
    retry = decide_next(again, ended)
    assert isinstance(retry, PartitionLaunched) and retry.partition == "a"
    assert retry.attempt == 2 and retry.run_id != first.run_id
    assert "failed" in retry.reason
    third_round = evolve_backfill(
        evolve_backfill(again, retry), msgspec.structs.replace(req, round=3, rerun_all=True)
    )
    follow = decide_next(third_round, ended)  # the retry has not ended: never run twice
    assert isinstance(follow, PartitionSkipped) and follow.partition == "a"
    assert (follow.because, follow.run_id) == ("running", retry.run_id)


# -- on a server ------------------------------------------------------------------------


@pytest.fixture
async def served(bus: Bus) -> AsyncIterator[Bus]:
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=8):
        yield bus


async def _chain(bus: Bus, backfill_id: str) -> list[StoredSignal]:
    return [r for r in await bus.log.read_run(backfill_id) if isinstance(r, StoredSignal)]


async def _launched(bus: Bus, backfill_id: str) -> list[PartitionLaunched]:
    return [
        r.signal.body
        for r in await _chain(bus, backfill_id)
        if isinstance(r.signal.body, PartitionLaunched)
    ]


async def _peak_running(bus: Bus, chain: list[StoredSignal]) -> int:
    """The most runs of the backfill not ended at once, from the log: a run counts from
    its ``partition_launched`` (recorded before it is requested) to its ending signal,
    in stream order."""
    events: list[tuple[int, int]] = []
    for rec in chain:
        body = rec.signal.body
        if isinstance(body, PartitionLaunched):
            last = await bus.log.last_of_run(body.run_id)
            assert isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS
            events += [(rec.stream_seq, 1), (last.stream_seq, -1)]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


async def test_24_hourly_windows_at_most_3_at_once_and_a_second_call_starts_nothing(
    served: Bus,
) -> None:
    bus = served
    client = Client(bus)
    args = {
        "start": datetime(2026, 1, 1, tzinfo=UTC),
        "end": datetime(2026, 1, 2, tzinfo=UTC),
        "every": "1h",
        "input": {"seconds": 0.1, "day": "$.window.start"},
        "max_concurrent": 3,
        "tags": {"team": "data"},
    }
    report = await client.backfill("slow", **args)  # type: ignore[arg-type]
    assert report.ok and report.finished.completed == 24
    chain = await _chain(bus, report.backfill_id)
    launched = [r.signal.body for r in chain if isinstance(r.signal.body, PartitionLaunched)]
    assert len(launched) == 24 and len({b.run_id for b in launched}) == 24
    assert 1 < await _peak_running(bus, chain) <= 3  # overlapping, never over the limit
    first = launched[0]
    assert first.window_start == "2026-01-01T00:00:00+00:00"
    assert first.window_end == "2026-01-01T01:00:00+00:00"
    requested = await bus.log.first_of_kind(first.run_id, "run_requested")
    assert isinstance(requested, StoredSignal)
    assert requested.signal.body.tags == {  # type: ignore[union-attr]
        "team": "data",
        "backfill": report.backfill_id,
        "partition": first.partition,
    }

    again = await client.backfill("slow", **args)  # type: ignore[arg-type]
    assert again.backfill_id == report.backfill_id
    assert (again.finished.round, again.finished.skipped, again.finished.completed) == (2, 24, 0)
    after = await _chain(bus, report.backfill_id)
    new = after[len(chain) :]
    assert [type(r.signal.body) for r in new] == [
        BackfillRequested,
        *[PartitionSkipped] * 24,
        BackfillFinished,
    ]
    shown = await read_backfill(bus, report.backfill_id)
    assert shown["counts"] == {"completed": 24} and shown["round"] == 2
    verdict = await verify_log(bus, None, projection=False)
    assert verdict.intact, [v.findings for v in verdict.verdicts if not v.intact]


async def test_two_drivers_of_one_backfill_start_each_partition_once(served: Bus) -> None:
    bus = served
    plan = plan_backfill(
        "slow",
        partitions=[str(i) for i in range(8)],
        input={"seconds": 0.05, "key": "$.partition"},
        max_concurrent=2,
    )
    one, two = await asyncio.gather(
        drive_backfill(Client(bus), plan, interval=0.02),
        drive_backfill(Client(bus), plan, interval=0.02),
    )
    assert one.finished == two.finished and one.finished.completed == 8
    chain = await _chain(bus, plan.backfill_id)
    launched = [r.signal.body for r in chain if isinstance(r.signal.body, PartitionLaunched)]
    assert sorted(b.partition for b in launched) == sorted(str(i) for i in range(8))
    assert sum(isinstance(r.signal.body, BackfillRequested) for r in chain) == 1
    assert await _peak_running(bus, chain) <= 2


async def test_a_backfill_stopped_midway_resumes_its_round_and_starts_nothing_twice(
    served: Bus,
) -> None:
    bus = served
    plan = plan_backfill(
        "slow",
        partitions=[str(i) for i in range(6)],
        input={"seconds": 0.3, "key": "$.partition"},
        max_concurrent=2,
    )
    first = asyncio.create_task(drive_backfill(Client(bus), plan, interval=0.02))
    while len(await _launched(bus, plan.backfill_id)) < 2:
        await asyncio.sleep(0.02)
    first.cancel()  # Ctrl-C: the two runs launched go on
    with pytest.raises(asyncio.CancelledError):
        await first
    report = await drive_backfill(Client(bus), plan, interval=0.02)
    assert report.finished.round == 1 and report.finished.completed == 6
    chain = await _chain(bus, plan.backfill_id)
    launched = [b.partition for b in await _launched(bus, plan.backfill_id)]
    assert sorted(launched) == [str(i) for i in range(6)]  # each once
    assert sum(isinstance(r.signal.body, BackfillRequested) for r in chain) == 1
    assert await _peak_running(bus, chain) <= 2


async def test_a_failed_partition_runs_again_on_the_second_call(
    served: Bus, settings: Settings
) -> None:
    env = server_env(settings)
    cmd = (
        "backfill",
        "slow",
        "--partitions",
        "0,0.05,broken",
        "--input-template",
        '{"seconds": "$.partition"}',
        "--json",
    )
    first = await sisas_async(*cmd, env=env)
    assert first.returncode == 1, first.stderr
    out = json.loads(first.stdout)
    assert (out["completed"], out["failed"], out["failed_partitions"]) == (2, 1, ["broken"])
    broken = next(r for r in out["results"] if r["partition"] == "broken")
    assert "could not convert string to float" in broken["error"], broken  # why, not just failed
    assert {r["error"] for r in out["results"] if r["partition"] != "broken"} == {None}
    table = await sisas_async(*cmd[:-1], "--all", env={**env, "COLUMNS": "250"})
    assert table.returncode == 1 and "could not convert string to float" in table.stdout
    assert f"sisas show {broken['run_id']}" not in table.stdout  # round 2 ran it again
    assert "why a run failed: `sisas show" in table.stdout
    second = await sisas_async(*cmd, env=env)
    assert second.returncode == 1, second.stderr
    again = json.loads(second.stdout)
    assert (again["round"], again["skipped"], again["failed"]) == (3, 2, 1)
    retried = next(r for r in again["results"] if r["partition"] == "broken")
    assert retried["attempts"] == 3 and retried["run_id"] != broken["run_id"]
    chain = await _chain(served, out["backfill_id"])
    retry = [
        r.signal.body
        for r in chain
        if isinstance(r.signal.body, PartitionLaunched) and r.signal.body.round == 3
    ]
    assert [(b.partition, b.attempt) for b in retry] == [("broken", 3)]
    assert "failed: attempt 3" in retry[0].reason
    listed = await sisas_async("backfills", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["backfills"]
    assert row["backfill_id"] == out["backfill_id"] and row["counts"] == {
        "completed": 2,
        "failed": 1,
    }
    other = await sisas_async("backfill", "slow", "--partitions", "0", "--json", env=env)
    assert other.returncode == 0, other.stderr
    latest = json.loads(other.stdout)["backfill_id"]
    listed = await sisas_async("backfills", "list", "--json", env=env)
    ids = [r["backfill_id"] for r in json.loads(listed.stdout)["backfills"]]
    assert ids == [latest, out["backfill_id"]]  # the latest first, whatever their ids
    table = await sisas_async("backfills", "list", env={**env, "COLUMNS": "200"})
    assert "last decision" in table.stdout and table.stdout.index(latest) < table.stdout.index(
        out["backfill_id"]
    )
    missing = await sisas_async("backfills", "show", "bf-nothing", env=env)
    assert missing.returncode == 2 and "no backfill" in missing.stderr


async def test_bad_backfill_arguments_exit_2_naming_the_fix(settings: Settings) -> None:
    env = server_env(settings)
    both = await sisas_async(
        "backfill", "slow", "--partitions", "a", "--from", "2026-01-01", env=env
    )
    assert both.returncode == 2 and "not both" in both.stderr
    every = await sisas_async(
        "backfill", "slow", "--from", "2026-01-01", "--to", "2026-01-02", "--every", "7h", env=env
    )
    assert every.returncode == 2 and "hours dividing 24" in every.stderr
    template = await sisas_async(
        "backfill",
        "slow",
        "--partitions",
        "a",
        "--input-template",
        '{"x": "$.window.start"}',
        env=env,
    )
    assert template.returncode == 2 and "$.window.start" in template.stderr


def test_a_backfill_of_a_schedule_gives_each_window_the_input_its_tick_would() -> None:
    nightly = Schedule(
        name="nightly",
        cron="0 2 * * *",
        timezone="Europe/Paris",
        pipeline="slow",
        input={"seconds": 0, "day": "$.date", "since": "$.window.start"},
        tags={"team": "data"},
    )
    plan = plan_backfill(
        "slow",
        schedule=nightly,
        start=datetime(2026, 3, 27, tzinfo=PARIS),
        end=datetime(2026, 3, 30, 3, tzinfo=PARIS),
    )
    assert plan.timezone == "Europe/Paris" and plan.every == "0 2 * * *"
    assert [p.key for p in plan.partitions] == [
        "2026-03-27T02:00:00+01:00",
        "2026-03-28T02:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist that night: cron runs at 03:00
    ]
    window = plan.partitions[0]
    doc = plan.document(window)
    assert doc["tick"] == window.end and doc["schedule"] == "nightly"
    assert partition_input(plan.input, doc) == {
        "seconds": 0,
        "day": "2026-03-27",
        "since": "2026-03-27T02:00:00+01:00",
    }
    assert plan.seed_of(window) == tick_seed(nightly, datetime.fromisoformat(window.end))
    assert plan.tags == {"team": "data", "schedule": "nightly"}
    with pytest.raises(UsageError, match="runs slow, not chain7"):
        plan_backfill("chain7", schedule=nightly, start=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_bad_plan_from_python_names_the_python_arguments_too() -> None:
    with pytest.raises(UsageError, match=r"from Python partitions=\) or time windows"):
        plan_backfill("slow", partitions=["a"], every="1h")
    with pytest.raises(UsageError, match=r"from Python: start=, end= and every="):
        plan_backfill("slow", every="1h")
