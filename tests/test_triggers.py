"""Triggers: rules evaluated purely, and upstream messages published by an outside client
(duplicated, redelivered beyond the duplicate window) starting exactly one run each."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import StreamConfig

from sisas.bus.runtime import Bus
from sisas.client.verification import verify_log
from sisas.errors import UsageError
from sisas.handlers.triggers import evaluate, message_id, parse_rules, subject_matches
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.services.triggers import TriggerService, evaluation_chain
from sisas.signals import StoredSignal, TriggerEvaluated
from sisas.signals.names import UPSTREAM_STREAM
from tests.cli_process import sisas
from tests.runs import ROOT, wait_end

RULES = (ROOT / "examples" / "triggers" / "sisas.toml").read_text()
CATALOGUE = json.loads((ROOT / "examples" / "triggers" / "catalogue.json").read_text())


def test_rules_match_subjects_filter_fields_and_build_the_input() -> None:
    rules = {r.name: r for r in parse_rules(RULES)}
    assert subject_matches("upstream.tasks.>", "upstream.tasks.a.b")
    assert not subject_matches("upstream.tasks.>", "upstream.tasks")
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*.c", "a.b.d")
    rule = rules["catalogue-ready"]
    ev = evaluate(rule, "upstream.catalogues.x", CATALOGUE, "m1")
    assert ev.matched and ev.input == CATALOGUE["catalogue"] and ev.run_id.startswith("taxonomy-")
    assert evaluate(rule, "upstream.catalogues.x", CATALOGUE, "m1").run_id == ev.run_id
    assert evaluate(rule, "upstream.catalogues.x", CATALOGUE, "m2").run_id != ev.run_id
    draft = {**CATALOGUE, "status": "draft"}
    assert evaluate(rule, "upstream.catalogues.x", draft, "m1").reason == (
        "status is 'draft', not 'ready'"
    )
    tasks = rules["task-batch"]
    lacking = evaluate(tasks, "upstream.tasks.n", {"meta": {"kind": "nightly"}}, "m3")
    assert not lacking.matched
    assert lacking.reason == "the input needs $.tasks, $.meta.seed, which the message lacks"
    assert (
        message_id("s", b"{}", None) == message_id("s", b"{}", None) != message_id("t", b"{}", None)
    )


def test_a_bad_rules_file_is_a_usage_error_naming_the_problem() -> None:
    with pytest.raises(UsageError, match="not valid TOML"):
        parse_rules("[[trigger]\nname=")
    with pytest.raises(UsageError, match="no \\[\\[trigger\\]\\] tables"):
        parse_rules("x = 1")
    with pytest.raises(UsageError, match="pipeline"):
        parse_rules('[[trigger]]\nname = "a"\nsubject = "u.x"')
    with pytest.raises(UsageError, match="sisas's own"):
        parse_rules('[[trigger]]\nname = "a"\nsubject = "sisas.in.x"\npipeline = "p"')


def test_triggers_test_explains_each_rule_and_exits_by_match() -> None:
    base = ["triggers", "test", "examples/triggers/sisas.toml"]
    ok = sisas(
        *base, "examples/triggers/catalogue.json", "--subject", "upstream.catalogues.a", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    results = {r["trigger"]: r for r in json.loads(ok.stdout)["results"]}
    assert results["catalogue-ready"]["matched"]
    assert "does not match upstream.tasks.>" in results["task-batch"]["reason"]
    none = sisas(*base, '{"status": "draft"}', "--subject", "upstream.catalogues.a")
    assert none.returncode == 1 and "status is 'draft', not 'ready'" in none.stdout


@pytest.fixture
async def triggered(bus: Bus) -> AsyncIterator[tuple[Bus, TriggerService]]:
    # The upstream stream with a 1 s duplicate window, so a redelivery can come after it.
    await bus.js.add_stream(
        StreamConfig(
            name=UPSTREAM_STREAM,
            subjects=["upstream.catalogues.*", "upstream.tasks.>"],
            storage="file",  # type: ignore[arg-type]
            duplicate_window=1.0,
        )
    )
    pipes = load_pipelines(["examples.taxonomy"], entry_points=False)
    service = TriggerService(bus, parse_rules(RULES))
    async with running_services(bus, pipes, concurrency=2) as stop:
        await service.start()
        task = asyncio.create_task(service.run(stop))
        yield bus, service
        stop.set()
        await task


async def _evaluations(bus: Bus, msg_id: str) -> list[TriggerEvaluated]:
    records = await bus.log.read_run(evaluation_chain(msg_id))
    return [r.signal.body for r in records if isinstance(r, StoredSignal)]  # type: ignore[misc]


async def test_each_upstream_message_starts_exactly_one_run_however_often_it_comes(
    triggered: tuple[Bus, TriggerService], nats_server: object
) -> None:
    bus, service = triggered
    outside = await nats.connect(bus.url)  # the upstream system: its own connection
    js = outside.jetstream()
    one = json.dumps(CATALOGUE).encode()
    two = json.dumps({**CATALOGUE, "catalogue": {**CATALOGUE["catalogue"], "name": "two"}})
    await js.publish("upstream.catalogues.a", one, headers={"Nats-Msg-Id": "cat-1"})
    await js.publish("upstream.catalogues.a", one, headers={"Nats-Msg-Id": "cat-1"})  # deduped
    await js.publish("upstream.catalogues.b", two.encode())  # no id: keyed on its content
    await js.publish("upstream.catalogues.b", two.encode())  # a duplicate JetStream keeps
    await js.publish("upstream.catalogues.c", b'{"status": "draft"}')  # filtered out
    await js.publish("upstream.catalogues.d", b"not json {")  # bad input
    await asyncio.sleep(1.5)  # past the upstream stream's duplicate window ...
    await js.publish("upstream.catalogues.a", one, headers={"Nats-Msg-Id": "cat-1"})  # ... again
    deadline = time.monotonic() + 60
    while service.evaluated < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert service.evaluated == 6, service.evaluated  # 7 published, 1 deduped by JetStream
    await outside.close()

    first = await _evaluations(bus, "cat-1")
    assert [e.duplicate for e in first] == [False, True]  # redelivered beyond the window
    run_one = first[0].results[0].run_id
    assert first[1].results[0].run_id == run_one
    second_id = message_id("upstream.catalogues.b", two.encode(), None)
    second = await _evaluations(bus, second_id)
    assert [e.duplicate for e in second] == [False, True]
    run_two = second[0].results[0].run_id
    draft = await _evaluations(
        bus, message_id("upstream.catalogues.c", b'{"status": "draft"}', None)
    )
    assert [r.matched for r in draft[0].results] == [False, False]
    assert draft[0].results[0].reason == "status is 'draft', not 'ready'"
    bad = await _evaluations(bus, message_id("upstream.catalogues.d", b"not json {", None))
    assert bad[0].error.startswith("the message is not JSON")

    assert service.started == 2  # one run per matching message
    for run_id in (run_one, run_two):
        state, signals = await wait_end(bus, run_id)
        assert state.status == "completed", state.error
        starts = [s for s in signals if s.kind == "run_requested"]
        assert len(starts) == 1 and starts[0].body.requested_by.startswith(
            "trigger catalogue-ready"
        )  # type: ignore[union-attr]
    report = await verify_log(bus, None, projection=False)
    assert report.intact, [v.findings for v in report.verdicts if not v.intact]
