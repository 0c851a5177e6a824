"""Tags: given on a request (client, `sisas run --tag`, `sisas batch --tag`), recorded in
the run's first signal, listed and filtered by `sisas runs --tag` and Client.runs(tags=)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client import Client
from sisas.errors import InvalidName
from sisas.handlers.triggers import evaluate, parse_rules
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.signals import RunRequested
from sisas.signals.names import check_tags, parse_tag
from tests.cli_process import fresh_env, server_env, sisas, sisas_async
from tests.runs import TEST_PIPES

QUICK = {"seconds": 0.0}


@pytest.fixture
async def client(bus: Bus, settings: Settings) -> AsyncIterator[Client]:
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        async with await Client.connect(settings) as c:
            yield c


def test_a_tag_is_key_equals_value_and_a_bad_one_names_the_fix() -> None:
    assert parse_tag("team=data") == ("team", "data")
    assert parse_tag("owner/team=a=b") == ("owner/team", "a=b")
    with pytest.raises(InvalidName, match="--tag team=data"):
        parse_tag("team")
    with pytest.raises(InvalidName, match="letters, digits"):
        check_tags({"bad key": "x"})
    with pytest.raises(InvalidName, match="at most 200"):
        check_tags({"k": "x" * 201})
    with pytest.raises(InvalidName, match="tag team has an empty value"):
        parse_tag("team=")


def test_a_trigger_rule_tags_its_runs_and_names_itself() -> None:
    rule = parse_rules(
        '[[trigger]]\nname = "r"\nsubject = "u.x"\npipeline = "p"\ntags = { team = "data" }'
    )[0]
    ev = evaluate(rule, "u.x", {}, "m1")
    assert ev.matched and ev.tags == {"team": "data", "trigger": "r"}


async def test_tags_round_trip_from_request_to_log_to_runs_filter(
    client: Client, settings: Settings
) -> None:
    tagged = await client.start("slow", QUICK, seed=7, tags={"team": "data", "env": "ci"})
    other = await client.start("slow", QUICK, seed=8, tags={"team": "ops"})
    plain = await client.start("slow", QUICK, seed=9)
    for handle in (tagged, other, plain):
        assert (await handle.result(timeout=60)).status == "completed"
    signals = [s async for s in tagged.signals()]
    first = signals[0]
    assert isinstance(first.body, RunRequested)
    assert first.body.tags == {"team": "data", "env": "ci"}  # in the run's first signal

    async def listed(**tags: str) -> set[str]:
        rows = await client.runs(tags=tags, limit=100)
        return {r["run_id"] for r in rows}

    mine = {tagged.run_id, other.run_id, plain.run_id}
    for _ in range(100):  # the projector folds the last signals
        if mine <= await listed():
            break
    assert await listed(team="data") == {tagged.run_id}
    assert await listed(team="data", env="ci") == {tagged.run_id}
    assert await listed(team="data", env="prod") == set()
    assert await listed(team="ops") == {other.run_id}
    rows = {r["run_id"]: r for r in await client.runs(limit=100)}
    assert rows[tagged.run_id]["tags"] == {"env": "ci", "team": "data"}
    assert rows[plain.run_id]["tags"] == {}

    env = server_env(settings)
    shown = await sisas_async("runs", "--tag", "team=ops", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert [r["run_id"] for r in json.loads(shown.stdout)["runs"]] == [other.run_id]
    ran = await sisas_async(
        "run",
        "slow",
        "--input",
        "-",
        "--tag",
        "team=cli",
        "--wait",
        "--json",
        env=env,
        input=json.dumps(QUICK),
    )
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    state = await client.state(run_id)
    assert state.tags == {"team": "cli"}
    table = await sisas_async("runs", "--tag", "team=data", env={**env, "COLUMNS": "200"})
    assert table.returncode == 0 and "env=ci team=data" in table.stdout, table.stdout
    stats = await sisas_async("stats", "--tag", "team=data", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    [slow] = [p for p in json.loads(stats.stdout)["pipelines"] if p["pipeline"] == "slow"]
    assert slow["runs"] == 1 and slow["completed"] == 1  # only the run tagged team=data
    [nap] = [p for p in json.loads(stats.stdout)["phases"] if p["phase"] == "nap"]
    assert nap["runs"] == 1
    none = await sisas_async("stats", "--tag", "team=nobody", env=env)
    assert none.returncode == 0 and "no runs with team=nobody." in none.stdout, none.stdout
    bad = await sisas_async("runs", "--tag", "team", env=env)
    assert bad.returncode == 2 and "--tag team=data" in bad.stderr


def test_a_tag_with_an_empty_value_is_exit_2_naming_the_tag(tmp_path: Path) -> None:
    for command in (("run", "slow"), ("batch", "slow", "--inputs", str(tmp_path)), ("runs",)):
        refused = sisas(*command, "--tag", "team=", env=fresh_env(tmp_path))
        assert refused.returncode == 2, refused.stderr
        assert "tag team has an empty value" in refused.stderr
