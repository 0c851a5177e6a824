"""Schedules: ticks and decisions computed purely; schedulers on a real nats-server
deciding each tick once (two at a time), catching up after downtime as the policy says,
and skipping or queueing an overlap; every decision a recorded signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.client.verification import verify_log
from sisas.errors import UsageError
from sisas.handlers.schedules import (
    Schedule,
    ScheduleState,
    decide_tick,
    next_ticks,
    parse_schedules,
    schedule_chain,
    schedules_of,
    tick_document,
    tick_input,
    tick_run_id,
    window_start,
)
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.services.host import running_services
from sisas.services.schedules import ScheduleService, pause_schedule, resume_schedule
from sisas.signals import RunRequested, ScheduleTicked, StoredSignal
from tests.cli_process import Command, fresh_env, server_env, sisas, sisas_async
from tests.runs import ROOT, TEST_PIPES, wait_end

EVERY_SECOND = """
[[schedule]]
name = "{name}"
cron = "* * * * * *"
pipeline = "slow"
input = {{ seconds = {seconds}, tick = "$.tick", since = "$.window.start" }}
overlap = "{overlap}"
catch_up = {catch_up}
grace = {grace}
tags = {{ team = "data" }}
"""
T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
EXAMPLE = ROOT / "examples" / "schedules" / "sisas.toml"


def every_second(
    name: str,
    *,
    overlap: str = "allow",
    catch_up: int = 0,
    seconds: float = 0.0,
    grace: float = 0.5,
) -> Schedule:
    text = EVERY_SECOND.format(
        name=name, overlap=overlap, catch_up=catch_up, seconds=seconds, grace=grace
    )
    return parse_schedules(text)[0]


# -- pure -------------------------------------------------------------------------------


def test_ticks_follow_the_time_zone_and_dst() -> None:
    # 02:30 does not exist in Paris on 2026-03-29: Debian cron runs it at 03:00.
    ticks = next_ticks("30 2 * * *", "Europe/Paris", datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    assert [t.isoformat() for t in ticks] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]
    every = next_ticks("*/10 * * * * *", "UTC", T0, 2)
    assert [t.second for t in every] == [10, 20]


def test_the_example_schedules_build_the_clustering_input_from_the_tick() -> None:
    found = {s.name: s for s in parse_schedules(EXAMPLE.read_text())}
    nightly = found["sensors-nightly"]
    tick = next_ticks(nightly.cron, nightly.timezone, datetime(2026, 3, 28, 12, tzinfo=UTC), 1)[0]
    data = tick_input(nightly, tick_document(nightly, tick, window_start(nightly, tick)))
    assert data == {"name": "2026-03-29", "values": [0.1, 0.4, 2.2, 2.5, 9.0, 9.5], "k": 3}
    assert found["sensors-every-10s"].overlap == "skip"


def test_a_pipeline_declares_its_own_schedules() -> None:
    pipe = Pipeline("daily", version="1")
    pipe.schedule("every-day", "0 6 * * *", timezone="Europe/Paris", overlap="queue")
    [found] = schedules_of([pipe])
    assert (found.name, found.pipeline, found.overlap) == ("every-day", "daily", "queue")
    pipe.schedule("broken", "0 6 * *")
    with pytest.raises(UsageError, match="pipeline daily: schedule 'broken'"):
        schedules_of([pipe])


def test_a_bad_schedule_is_a_usage_error_naming_the_fix() -> None:
    base = '[[schedule]]\nname = "a"\npipeline = "p"\n'
    with pytest.raises(UsageError, match=r"not a cron expression.*sisas schedules test"):
        parse_schedules(base + 'cron = "61 * * * *"')
    with pytest.raises(UsageError, match=r"unknown time zone 'Mars/Olympus'.*IANA"):
        parse_schedules(base + 'cron = "* * * * *"\ntimezone = "Mars/Olympus"')
    with pytest.raises(UsageError, match=r"needs \$.nope, which a tick lacks"):
        parse_schedules(base + 'cron = "* * * * *"\ninput = "$.nope"')
    with pytest.raises(UsageError, match=r"\$\.overlap`: write 'skip' or 'queue' or 'allow'"):
        parse_schedules(base + 'cron = "* * * * *"\noverlap = "sometimes"')
    with pytest.raises(UsageError, match=r"\$\.catch_up`: write a whole number or 'skip'"):
        parse_schedules(base + 'cron = "* * * * *"\ncatch_up = "later"')
    with pytest.raises(UsageError, match=r"unknown field `every` \(the fields are name, cron"):
        parse_schedules(base + 'cron = "* * * * *"\nevery = "1h"')
    with pytest.raises(UsageError, match="no \\[\\[schedule\\]\\] tables"):
        parse_schedules("x = 1")


def test_decisions_follow_the_overlap_catch_up_and_pause_policies() -> None:
    def tick(n: int) -> datetime:
        return T0 + timedelta(seconds=n)

    def s(**kw: object) -> Schedule:
        return every_second("s", **kw)  # type: ignore[arg-type]

    busy = ScheduleState(last_tick=tick(0), running="slow-abc")
    on_time = {"now": tick(1), "running_live": True}
    skipped = decide_tick(s(overlap="skip"), tick(1), busy, **on_time)  # type: ignore[arg-type]
    assert skipped.action == "skipped" and "slow-abc has not ended" in skipped.reason
    assert skipped.running == "slow-abc" and skipped.window_start == tick(0).isoformat()
    queued = decide_tick(s(overlap="queue"), tick(1), busy, **on_time)  # type: ignore[arg-type]
    assert queued.action == "queued" and queued.queued == [tick(1).isoformat()]
    allowed = decide_tick(s(overlap="allow"), tick(1), busy, **on_time)  # type: ignore[arg-type]
    assert allowed.action == "started" and allowed.running == tick_run_id(s(), tick(1))
    paused = decide_tick(s(), tick(1), busy, now=tick(1), paused="by ann")
    assert paused.action == "skipped" and "paused (by ann)" in paused.reason
    missed = decide_tick(s(catch_up=2), tick(1), busy, now=tick(9), missed_rank=2)
    assert missed.action == "skipped" and "runs only the last 2 missed ticks" in missed.reason
    caught = decide_tick(s(catch_up=2), tick(1), busy, now=tick(9), missed_rank=1)
    assert caught.action == "started" and caught.catch_up
    assert tick_run_id(s(), tick(1)) == caught.run_id != tick_run_id(s(), tick(2))


def test_schedules_test_prints_the_next_ticks_and_exits_2_for_a_bad_expression() -> None:
    shown = sisas(
        "schedules",
        "test",
        "0 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--after",
        "2026-03-28T12:00:00Z",
        "--count",
        "2",
        "--json",
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["ticks"] == [
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist that night
        "2026-03-30T02:00:00+02:00",
    ]
    bad = sisas("schedules", "test", "0 2 * *")
    assert bad.returncode == 2 and "write 5 fields" in bad.stderr
    minute = sisas("schedules", "test", "61 * * * *")
    assert minute.returncode == 2
    assert "error: '61 * * * *' is not a cron expression (Bad minute)" in minute.stderr
    assert "schedule 'test'" not in minute.stderr and "EXPR" not in minute.stderr
    zone = sisas("schedules", "test", "0 2 * * *", "--timezone", "Mars/Olympus")
    assert zone.returncode == 2, zone.stderr
    assert zone.stderr.startswith("error: unknown time zone 'Mars/Olympus'"), zone.stderr
    # an --after without an offset is read in --timezone: midnight in Paris, not in UTC
    paris = sisas(
        "schedules",
        "test",
        "0 0 * * *",
        "--timezone",
        "Europe/Paris",
        "--after",
        "2026-03-28T23:30",
        "--count",
        "1",
        "--json",
    )
    assert paris.returncode == 0, paris.stderr
    assert json.loads(paris.stdout)["ticks"] == ["2026-03-29T00:00:00+01:00"]


# -- on a bus ---------------------------------------------------------------------------


@pytest.fixture
async def served(bus: Bus) -> AsyncIterator[Bus]:
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=4):
        yield bus


async def decisions(bus: Bus, name: str) -> list[ScheduleTicked]:
    records = await bus.log.read_run(schedule_chain(name))
    bodies = [r.signal.body for r in records if isinstance(r, StoredSignal)]
    assert all(isinstance(b, ScheduleTicked) for b in bodies)
    return bodies  # type: ignore[return-value]


SCHEDULE_FOR = float(os.environ.get("SISAS_TEST_SCHEDULE_SECONDS", "4.5"))
"""How long the two schedulers run: 4.5 s in the suite; the issue's check is a minute
(``SISAS_TEST_SCHEDULE_SECONDS=60``, docs/schedules.md)."""


@pytest.mark.timeout(SCHEDULE_FOR + 120)
async def test_two_schedulers_and_two_orchestrators_start_one_run_per_tick(
    served: Bus, settings: Settings
) -> None:
    bus = served
    schedule = every_second("pulse", overlap="allow", grace=5.0)  # a slow pass is on time
    stop = asyncio.Event()
    async with (
        open_bus(settings, name="second-scheduler") as other,
        running_services(other, {}),  # a second orchestrator, on its own connection
    ):
        one, two = ScheduleService(bus, [schedule]), ScheduleService(other, [schedule])
        await one.start()
        await two.start()
        tasks = [asyncio.create_task(s.run(stop)) for s in (one, two)]
        await asyncio.sleep(SCHEDULE_FOR)
        stop.set()
        await asyncio.gather(*tasks)
    ticks = await decisions(bus, "pulse")
    assert len(ticks) >= int(SCHEDULE_FOR * 2 / 3), ticks
    times = [datetime.fromisoformat(t.tick) for t in ticks]
    assert times == [times[0] + timedelta(seconds=i) for i in range(len(times))]  # none missing
    assert all(t.action == "started" and not t.catch_up for t in ticks)
    assert len({t.run_id for t in ticks}) == len(ticks)  # one run per tick
    assert one.decided + two.decided == len(ticks)  # each tick decided once, by either
    for t in ticks:
        state, signals = await wait_end(bus, t.run_id)
        assert state.status == "completed", state.error
        requested = [s.body for s in signals if isinstance(s.body, RunRequested)]
        assert len(requested) == 1  # none twice
        assert requested[0].tags == {"team": "data", "schedule": "pulse"}
        assert requested[0].requested_by == f"schedule pulse (tick {t.tick})"
    report = await verify_log(bus, None, projection=False)
    assert report.intact, [v.findings for v in report.verdicts if not v.intact]


async def test_a_restarted_scheduler_records_missed_ticks_as_its_catch_up_policy_says(
    bus: Bus,
) -> None:
    """The clock is passed in: the scheduler is down from T0+3 to T0+10."""
    catch = every_second("catch", catch_up=2)
    skip = every_second("skip", catch_up=0)
    first = ScheduleService(bus, [catch, skip], clock=lambda: T0)
    await first.start()
    for n in (1, 2, 3):
        while await first.step_all(T0 + timedelta(seconds=n)):
            pass
    later = ScheduleService(bus, [catch, skip], clock=lambda: T0 + timedelta(seconds=10))
    await later.start()
    while await later.step_all():
        pass
    caught = await decisions(bus, "catch")
    assert [datetime.fromisoformat(t.tick) for t in caught] == [
        T0 + timedelta(seconds=n) for n in range(1, 11)
    ]  # every tick recorded, the missed ones too
    actions = [(t.action, t.catch_up) for t in caught]
    assert actions == [
        *[("started", False)] * 3,
        *[("skipped", False)] * 4,  # T0+4 .. T0+7: missed, beyond the last 2
        *[("started", True)] * 2,  # T0+8, T0+9: caught up
        ("started", False),  # T0+10: on time
    ]
    assert "runs only the last 2 missed ticks" in caught[3].reason
    skipped = await decisions(bus, "skip")
    assert [t.action for t in skipped] == ["started"] * 3 + ["skipped"] * 6 + ["started"]
    assert "skips missed ticks" in skipped[5].reason


async def test_an_overlap_is_skipped_or_queued_and_recorded(served: Bus) -> None:
    bus = served
    skip = every_second("no-overlap", overlap="skip", seconds=1.0)
    queue = every_second("in-line", overlap="queue", seconds=1.0)
    service = ScheduleService(bus, [skip, queue], clock=lambda: T0)
    await service.start()
    for n in (1, 2):
        while await service.step_all(T0 + timedelta(seconds=n)):
            pass
    skipped = await decisions(bus, "no-overlap")
    assert [t.action for t in skipped] == ["started", "skipped"]
    assert skipped[1].reason == f"overlap: run {skipped[0].run_id} has not ended (overlap = skip)"
    queued = await decisions(bus, "in-line")
    assert [t.action for t in queued] == ["started", "queued"]
    await wait_end(bus, queued[0].run_id)
    while await service.step_all(T0 + timedelta(seconds=2)):
        pass
    released = (await decisions(bus, "in-line"))[-1]
    assert released.action == "released" and released.run_id == queued[1].run_id
    assert released.reason.startswith(f"run {queued[0].run_id} ended")
    state, _ = await wait_end(bus, released.run_id)
    assert state.status == "completed"


async def test_a_paused_schedule_records_its_ticks_as_skipped_until_resumed(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    s = every_second("pausable")
    file = tmp_path / "schedules.toml"
    file.write_text(
        EVERY_SECOND.format(name="pausable", overlap="allow", catch_up=0, seconds=0.0, grace=0.5)
    )
    service = ScheduleService(bus, [s], clock=lambda: T0)
    await service.start()
    env = server_env(settings)
    for verb in ("pause", "resume"):  # a name known nowhere: exit 2 naming the known ones
        unknown = await sisas_async("schedules", verb, "nosuch", "--schedules", str(file), env=env)
        assert unknown.returncode == 2, unknown.stderr
        assert "no schedule 'nosuch'" in unknown.stderr
        assert "known schedules: pausable" in unknown.stderr
        assert "--schedules FILE ([[schedule]] tables)" in unknown.stderr
    paused = await sisas_async(
        "schedules",
        "pause",
        "pausable",
        "--schedules",
        str(file),
        "--note",
        "maintenance",
        "--json",
        env=env,
    )
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    while await service.step_all(T0 + timedelta(seconds=1)):
        pass
    assert (await pause_schedule(bus, "pausable", by="test")) is not None  # paused already
    assert (await resume_schedule(bus, "pausable")) is not None
    # no file needed once it has decisions in the log (its chain sch-pausable)
    again = await sisas_async("schedules", "resume", "pausable", env=env)
    assert again.returncode == 1 and "not paused" in again.stderr
    bad = await sisas_async("schedules", "pause", "no such", env=env)
    assert bad.returncode == 2 and "invalid schedule name" in bad.stderr
    while await service.step_all(T0 + timedelta(seconds=2)):
        pass
    ticks = await decisions(bus, "pausable")
    assert [t.action for t in ticks] == ["skipped", "started"]
    assert "paused (by " in ticks[0].reason and "maintenance" in ticks[0].reason


async def test_sisas_up_stopped_and_restarted_records_the_missed_ticks_and_catches_up(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """`sisas up --schedules FILE` for a few ticks, stopped for 4 s, started again: every
    tick is in the chain, the missed ones skipped but the last (catch_up = 1), with why."""
    file = tmp_path / "schedules.toml"
    file.write_text(
        EVERY_SECOND.format(name="beat", overlap="allow", catch_up=1, seconds=0.0, grace=1.5)
    )
    env = server_env(settings)
    args = ("up", "--no-dashboard", "--schedules", str(file), "--pipelines", TEST_PIPES)

    async def up_until(count: int) -> None:
        cmd = await Command.start(*args, env=env)
        await cmd.until("sisas is up")
        while len(await decisions(bus, "beat")) < count:
            assert cmd.proc.returncode is None, cmd.err
            await asyncio.sleep(0.1)
        cmd.proc.send_signal(signal.SIGINT)
        assert await cmd.finish() == 0, cmd.err

    await up_until(2)
    stopped = len(await decisions(bus, "beat"))
    await asyncio.sleep(4)
    await up_until(stopped + 6)
    ticks = await decisions(bus, "beat")
    times = [datetime.fromisoformat(t.tick) for t in ticks]
    assert times == [times[0] + timedelta(seconds=i) for i in range(len(times))]  # none lost
    gap = ticks[stopped:]  # the downtime, then the restarted scheduler's ticks
    missed = [t for t in gap if t.action == "skipped"]
    assert len(missed) >= 2, [(t.tick, t.action, t.reason) for t in ticks]
    assert all("no scheduler ran at the tick" in t.reason for t in missed)
    caught = [t for t in gap if t.catch_up]
    assert caught and all(t.action == "started" for t in caught)  # the last missed one ran
    assert datetime.fromisoformat(caught[0].tick) > datetime.fromisoformat(missed[-1].tick)
    listed = await sisas_async("schedules", "list", "--schedules", str(file), "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    row = json.loads(listed.stdout)["schedules"][0]
    assert row["name"] == "beat" and row["chain"] == "sch-beat" and not row["paused"]
    assert row["last"]["tick"] == ticks[-1].tick and row["last"]["action"] == ticks[-1].action
    assert row["declared"]
    # Without the file, the schedule `up` ran is still listed, from its decisions.
    undeclared = await sisas_async("schedules", "list", "--json", env=env, cwd=tmp_path)
    assert undeclared.returncode == 0, undeclared.stderr
    [row] = json.loads(undeclared.stdout)["schedules"]
    assert (row["name"], row["pipeline"], row["declared"], row["cron"]) == (
        "beat",
        "slow",
        False,
        "",
    )
    assert row["last"]["tick"] == ticks[-1].tick and row["next_tick"] is None
    table = await sisas_async("schedules", "list", env={**env, "COLUMNS": "200"}, cwd=tmp_path)
    assert "beat *" in table.stdout and "pass --schedules FILE" in table.stdout, table.stdout


PARIS = """
[[schedule]]
name = "sensors-nightly"
cron = "0 2 * * *"
timezone = "Europe/Paris"
pipeline = "slow"
"""


async def test_schedules_list_fits_80_columns_and_gives_the_pause_as_fields(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    file = tmp_path / "schedules.toml"
    file.write_text(PARIS)
    env = server_env(settings, COLUMNS="80")
    paused = await sisas_async(
        "schedules",
        "pause",
        "sensors-nightly",
        "--schedules",
        str(file),
        "--note",
        "trial",
        env=env,
    )
    assert paused.returncode == 0, paused.stderr
    shown = await sisas_async("schedules", "list", "--schedules", str(file), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout, shown.stdout  # nothing cut: columns dropped, and named
    assert "sensors-nightly" in shown.stdout and "paused" in shown.stdout
    assert "not shown at 80 columns: cron (zone)" in shown.stdout
    assert all(len(line) <= 80 for line in shown.stdout.splitlines()), shown.stdout
    listed = await sisas_async("schedules", "list", "--schedules", str(file), "--json", env=env)
    pause = json.loads(listed.stdout)["schedules"][0]["paused_by"]
    assert set(pause) == {"by", "at", "note"} and pause["note"] == "trial"
    assert datetime.fromisoformat(pause["at"]).tzinfo is not None


def test_no_schedules_found_names_the_file_form_whole(tmp_path: Path) -> None:
    missing = sisas("schedules", "list", env=fresh_env(tmp_path), cwd=tmp_path)
    assert missing.returncode == 2
    assert "--schedules FILE ([[schedule]] tables)" in missing.stderr, missing.stderr


async def test_a_schedule_of_a_pipeline_no_worker_has_is_said_at_start(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    file = tmp_path / "schedules.toml"
    file.write_text('[[schedule]]\nname = "ghost"\ncron = "0 0 1 1 *"\npipeline = "nopipe"\n')
    env = server_env(settings)
    cmd = await Command.start("schedules", "run", "--schedules", str(file), env=env)
    await cmd.until("schedule ghost runs 'nopipe', which no worker has registered")
    assert "`sisas schedules pause ghost`" in cmd.err, cmd.err
    cmd.proc.send_signal(signal.SIGINT)
    assert await cmd.finish() == 0, cmd.err
    assert "stopped: 0 ticks decided, 0 runs asked" in cmd.err, cmd.err
