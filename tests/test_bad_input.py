"""Bad input on every subject sisas listens on, sent by an outside client.

The real services run here against a real nats-server (orchestrator, worker, projector
with its query service, a trigger service with a small rules file, signing on); a plain
nats-py connection does the abuse: fuzzed bytes and JSON (hypothesis), schema-valid
inputs with wrong content, oversize payloads, forged signals, trigger messages that lack
what their rule needs, pipeline files that do not import. Each abuse must leave a
recorded rejection (``sisas.in._._.rejected``, a ``trigger_evaluated`` with the reason,
a rejected row of the projection, a ``replay verify`` finding, an error answer) and a
system that keeps serving: a normal run started afterwards completes, the projection
digest equals a rebuild, and every handler task is still alive.

=======================  =====================================  ==========================
subject                  abuse                                  recorded as
=======================  =====================================  ==========================
``sisas.in.>``           bytes, JSON, input-shaped JSON,        a rejection on
                         wrong kind, run id not the subject's,  ``sisas.in._._.rejected``
                         huge names, reports and cancels for
                         runs, phases or attempts never there
``sisas.in.>``           unknown pipeline                       the run's ``run_failed``
``sisas.in.>``           a sender's clock years off             nothing: the run completes
``sisas.run.>``          bytes, JSON, forged runs and work,     a ``replay verify`` finding
                         chain continuations, broken links,     per message, a rejected
                         tampered, replayed, misplaced copies   row where it cannot fold
``sisas.query.*``        bytes, JSON, bad or absurd params,     an ``ok: false`` answer
                         unknown verbs
upstream subjects        bytes, JSON, fields the rule needs     a ``trigger_evaluated``
                         missing or mistyped, huge fields       with each rule's reason
``sisas.live.*``         bytes, JSON                            nothing listens
any, past max_payload    client and bare-protocol publishes     refused to the publisher
``--pipelines FILE``     syntax error, failing import, raises,  exit 2 naming file, line
                         no pipeline                            and fix; nothing sent
=======================  =====================================  ==========================

Forged signals that only the signatures betray are in ``tests/test_replay_bus.py``
(``test_signals_forged_by_an_outside_client_are_found``,
``test_a_signing_orchestrator_lets_verify_catch_a_legal_looking_forgery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import reprlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats
import nats.js.errors
import pytest
from hypothesis import HealthCheck, Phase, given, note
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.handlers.triggers import message_id, parse_rules
from sisas.loader import load_pipelines
from sisas.projections.projector import Projector
from sisas.security.keys import generate_seed, signer_from_file
from sisas.services.orchestrator import REJECTED_SUBJECT, Orchestrator
from sisas.services.query import PROGRESS_HEADER, QueryService, local_projector
from sisas.services.triggers import TriggerService, evaluation_chain
from sisas.services.worker import Worker
from sisas.signals import KINDS, ChainHead, Draft, PhaseScheduled, StoredSignal, TriggerEvaluated
from sisas.signals.codec import encode_signal
from sisas.signals.inputs import INPUT_KINDS, CancelRun, Input, PhaseReport, StartRun, encode_input
from sisas.signals.names import (
    INPUT_STREAM,
    QUERY_VERBS,
    UPSTREAM_STREAM,
    WORK_STREAM,
    input_subject,
    log_subject,
)
from tests.cli_process import server_env, sisas_async
from tests.conftest import AT
from tests.runs import TEST_PIPES, start, wait_end
from tests.strategies import bodies

T = TypeVar("T")
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 200

RULES = """
[[trigger]]
name = "order-ready"
subject = "upstream.orders.*"
pipeline = "chain7"
when = { status = "ready" }
input = "$.n"
seed = "$.seed"
"""
"""One rule: a ready order with a number ``n`` and a ``seed`` starts a chain7 run."""

FUZZ = fuzz_settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs round trips
    suppress_health_check=[HealthCheck.too_slow],
)

_token = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}", fullmatch=True)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_jsonish = _json_values.map(lambda v: json.dumps(v).encode())
_times = st.datetimes(  # hypothesis takes naive bounds, and zones apart
    min_value=datetime(1, 1, 2),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@dataclass
class System:
    """The services under test, their tasks, and the outsider's connection."""

    bus: Bus
    settings: Settings
    public_key: str
    outside: NATS
    orchestrator: Orchestrator
    worker: Worker
    projector: Projector
    triggers: TriggerService
    tasks: list[asyncio.Task[None]]
    rejections: dict[int, dict[str, Any]] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)
    runs: int = 0

    def alive(self) -> None:
        for task in self.tasks:
            assert not task.done(), f"{task.get_name()} stopped: {_outcome(task)}"

    async def rejection(self, seq: int, timeout: float = 10.0) -> dict[str, Any]:
        """The rejection recorded for the input at SISAS_IN ``seq``."""
        return await _until(lambda: _now(self.rejections.get(seq)), timeout, f"rejection of {seq}")


def _outcome(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    return repr(task.exception())


async def _now(value: T | None) -> T | None:
    return value


async def _until(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def system(settings: Settings, tmp_path: Path) -> AsyncIterator[System]:
    key = tmp_path / "orchestrator.seed"
    key.write_bytes(generate_seed())
    rules_file = tmp_path / "sisas.toml"
    rules_file.write_text(RULES)
    rules = parse_rules(rules_file.read_text(), str(rules_file))
    loaded = load_pipelines([TEST_PIPES], entry_points=False)
    pipes = {name: loaded[name] for name in ("slow", "chain7")}
    signed = dataclasses.replace(settings, signing_key=key)
    async with open_bus(signed) as bus, local_projector(bus) as projector:
        stop = asyncio.Event()
        await projector.open()
        queries = QueryService(bus.nc, projector)
        await queries.start()
        orchestrator = Orchestrator(bus)
        worker = Worker(bus, pipes, concurrency=2)
        await worker.register()
        triggers = TriggerService(bus, rules)
        await triggers.start()
        tasks = [
            asyncio.create_task(orchestrator.run(stop), name="orchestrator"),
            asyncio.create_task(worker.run(stop), name="worker"),
            asyncio.create_task(projector.run(stop), name="projector"),
            asyncio.create_task(triggers.run(stop), name="triggers"),
        ]
        outside = await nats.connect(bus.url, name="outsider")
        sys_ = System(
            bus=bus,
            settings=signed,
            public_key=signer_from_file(key).public_key,
            outside=outside,
            orchestrator=orchestrator,
            worker=worker,
            projector=projector,
            triggers=triggers,
            tasks=tasks,
        )

        async def on_rejected(msg: Any) -> None:
            with_seq = json.loads(msg.data)
            if isinstance(with_seq, dict) and isinstance(with_seq.get("stream_seq"), int):
                sys_.rejections[with_seq["stream_seq"]] = with_seq

        await outside.subscribe(REJECTED_SUBJECT, cb=on_rejected)
        try:
            yield sys_
        finally:
            await outside.close()
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await queries.stop()


async def query(nc: NATS, verb: str, payload: bytes, timeout: float = 20.0) -> dict[str, Any]:
    """Ask ``sisas.query.<verb>`` as a plain client: progress messages skipped, the final
    answer decoded."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"sisas.query.{verb}", payload, reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=timeout)
            if not (msg.headers or {}).get(PROGRESS_HEADER):
                answer: dict[str, Any] = json.loads(msg.data)
                return answer
    finally:
        await sub.unsubscribe()


async def handled(sys_: System, stream: str, consumer: str, seq: int, timeout: float = 15) -> None:
    """Wait until ``consumer`` acknowledged (or terminated) everything up to ``seq``."""

    async def floor() -> bool:
        info = await sys_.bus.js.consumer_info(stream, consumer)
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq

    await _until(floor, timeout, f"{consumer} to handle {stream} seq {seq}")


async def keeps_serving(sys_: System, label: str) -> dict[str, Any]:
    """A normal run completes, the projection digest equals a rebuild, queries are
    answered, and every handler is still running. Returns the rebuild's result."""
    sys_.runs += 1
    run_id = f"after-{label}-{sys_.runs}"
    await start(sys_.bus, "slow", run_id, b'{"seconds": 0.01}')
    state, signals = await wait_end(sys_.bus, run_id, timeout=30)
    assert state.status == "completed", (run_id, state.error)
    assert all(s.sig.startswith(sys_.public_key) for s in signals)
    digest = await query(sys_.outside, "digest", b"{}")
    assert digest["ok"], digest
    rebuilt = await query(sys_.outside, "rebuild", b"")
    assert rebuilt["ok"], rebuilt
    result: dict[str, Any] = rebuilt["result"]
    assert result["equal"], (result["before"], result["after"])
    assert result["stream_seq"] >= digest["result"]["stream_seq"]
    sys_.alive()
    return result


def run_hypothesis(
    loop: asyncio.AbstractEventLoop,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], Coroutine[Any, Any, None]],
    examples: int = 40,
) -> Callable[[], None]:
    """A hypothesis test, to run in a thread, whose examples are checked on ``loop``. An
    example that is a function is called first (to build it with fresh ids)."""

    @fuzz_settings(FUZZ, max_examples=examples)
    @given(strategy)
    def fuzz(example: Any) -> None:
        if callable(example):
            example = example()
        note(_SHORT.repr(example))
        asyncio.run_coroutine_threadsafe(check(example), loop).result(timeout=60)

    return fuzz


def report_counts(title: str, sys_: System, **extra: object) -> None:
    sent = ", ".join(f"{k} {v}" for k, v in sorted(sys_.sent.items()))
    more = ", ".join(f"{k} {v}" for k, v in extra.items())
    print(f"{title}: sent {sum(sys_.sent.values())} ({sent}); {more}")


# -- sisas.in.> ----------------------------------------------------------------------


@dataclass(frozen=True)
class InputCase:
    label: str
    subject: str
    data: bytes
    expect: str  # "rejected", or how the run the input starts ends ("run_failed"...)
    run_id: str = ""


_fresh_ids = itertools.count()


def _at() -> datetime:
    return datetime.now(UTC)


def _fresh() -> str:
    """A run id never used before (hypothesis replays examples: ids must not repeat)."""
    return f"fz{next(_fresh_ids):06d}"


def _case(
    label: str, inp: Input, subject: str | None = None, expect: str = "rejected"
) -> InputCase:
    kind = str(type(inp).__struct_config__.tag)
    return InputCase(
        label=label,
        subject=subject or input_subject(inp.pipeline, inp.run_id, kind),
        data=encode_input(inp),
        expect=expect,
        run_id=inp.run_id,
    )


_in_subjects = st.one_of(
    st.tuples(_token, _token, st.sampled_from([*INPUT_KINDS, "bogus"])).map(
        lambda t: "sisas.in." + ".".join(t)
    ),
    st.lists(_token, min_size=1, max_size=5).map(lambda ts: "sisas.in." + ".".join(ts)),
    st.sampled_from(["sisas.in._.x.start_run", "sisas.in._.base.phase_report"]),
)
_input_shaped = st.fixed_dictionaries(
    {"kind": st.sampled_from(INPUT_KINDS)},
    optional={
        "id": st.text(max_size=5) | st.integers(),
        "pipeline": st.text(max_size=5),
        "run_id": st.text(max_size=5),
        "at": st.text(max_size=30) | st.integers(),
        "seed": st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
        "attempt": st.integers() | st.none(),
        "status": st.text(max_size=8),
        "extra": _json_values,
    },
).map(lambda doc: json.dumps(doc).encode())


INPUT_ABUSES = {
    "bytes": 15,
    "json": 10,
    "input-shaped": 10,
    "unknown pipeline": 4,
    "run id not its subject's": 4,
    "report for no run": 4,
    "cancel for no run": 4,
    "absurd attempt": 4,
    "unknown phase": 4,
    "wrong kind": 4,
    "huge name": 4,
    "another clock": 3,
}
"""Each kind of bad input and how many hypothesis examples of it to send."""


@st.composite
def input_cases(draw: st.DrawFn, which: str) -> Callable[[], InputCase]:
    """A case to build at send time (with a fresh run id where it needs one)."""
    if which in ("bytes", "json", "input-shaped"):
        payload = {"bytes": st.binary(max_size=300), "json": _jsonish}.get(which, _input_shaped)
        subject, data = draw(_in_subjects), draw(payload)
        return lambda: InputCase(which, subject, data, "rejected")
    status = draw(st.sampled_from(["started", "completed", "failed", "timed_out"]))
    attempt = draw(st.integers(min_value=1_000, max_value=2**62))
    phase = draw(_token) + "-x"
    kind = draw(st.sampled_from(["start_run", "phase_report", "bogus"]))
    size = draw(st.integers(min_value=1_000, max_value=200_000))
    clock = draw(st.just(datetime(9999, 12, 30, tzinfo=UTC)) | _times)

    def build() -> InputCase:
        fresh = _fresh()
        report = PhaseReport(
            id=f"report:{fresh}",
            pipeline="slow",
            run_id="base",
            at=_at(),
            phase="nap",
            attempt=0,
            status=status,  # type: ignore[arg-type]
            worker="outsider",
        )
        start_run = StartRun(id=f"start:{fresh}", pipeline="slow", run_id=fresh, at=_at())
        if which == "another clock":  # the sender's clock is years off: the run still runs
            # the base run stored this input already
            digest = "sha256:" + hashlib.sha256(b'{"seconds": 0.01}').hexdigest()
            inp = msgspec.structs.replace(start_run, at=clock, input_digest=digest)
            return _case(which, inp, expect="run_completed")
        if which == "unknown pipeline":
            inp = msgspec.structs.replace(start_run, pipeline="no-such-pipeline")
            return _case(which, inp, expect="run_failed")
        if which == "run id not its subject's":
            return _case(which, start_run, subject=input_subject("slow", "base", "start_run"))
        if which == "report for no run":
            return _case(which, msgspec.structs.replace(report, run_id=fresh))
        if which == "cancel for no run":
            return _case(which, CancelRun(id=f"c:{fresh}", pipeline="slow", run_id=fresh, at=_at()))
        if which == "absurd attempt":
            return _case(which, msgspec.structs.replace(report, attempt=attempt))
        if which == "unknown phase":
            return _case(which, msgspec.structs.replace(report, phase=phase))
        if which == "wrong kind":
            cancel = CancelRun(id=f"c:{fresh}", pipeline="slow", run_id="base", at=_at())
            return _case(which, cancel, subject=input_subject("slow", "base", kind))
        huge = msgspec.structs.replace(start_run, pipeline="p" * size)
        return _case(which, huge, subject=input_subject("slow", fresh, "start_run"))

    return build


async def test_fuzzed_and_wrong_inputs_are_rejected_and_recorded(system: System) -> None:
    sys_ = system
    await start(sys_.bus, "slow", "base", b'{"seconds": 0.01}')
    assert (await wait_end(sys_.bus, "base"))[0].status == "completed"
    js = sys_.outside.jetstream()
    outcomes: Counter[str] = Counter()

    async def check(case: InputCase) -> None:
        ack = await js.publish(case.subject, case.data)
        sys_.sent[case.label] += 1
        await handled(sys_, INPUT_STREAM, "orchestrator", ack.seq)
        if case.expect == "rejected":
            record = await sys_.rejection(ack.seq)
            assert record["subject"] == case.subject and record["reason"], record
            assert len(record["reason"]) < 2_000, "a rejection reason must stay readable"
        else:
            state, signals = await wait_end(sys_.bus, case.run_id, timeout=30)
            assert signals[-1].kind == case.expect, (signals[-1].kind, state.error)
        outcomes[case.expect] += 1
        sys_.alive()

    loop = asyncio.get_running_loop()
    for which, examples in INPUT_ABUSES.items():
        await asyncio.to_thread(run_hypothesis(loop, input_cases(which), check, examples))
    await keeps_serving(sys_, "inputs")
    recorded = sum(1 for r in sys_.rejections.values() if r["reason"])
    assert recorded == outcomes["rejected"] == sys_.orchestrator.rejected
    report_counts(
        "sisas.in.>",
        sys_,
        rejections_recorded=recorded,
        runs_failed_unknown_pipeline=outcomes["run_failed"],
        runs_completed_from_another_clock=outcomes["run_completed"],
    )


# -- sisas.query.* -------------------------------------------------------------------

_params = st.fixed_dictionaries(
    {},
    optional={
        "run_id": st.text(max_size=70) | st.integers() | st.just("x" * 100_000),
        "run_ids": st.lists(st.text(max_size=10), max_size=50) | st.text(max_size=5),
        "pipeline": st.text(max_size=10) | st.none(),
        "status": st.sampled_from(["running", "failed", "nosuch", ""]) | st.integers(),
        "since": st.sampled_from(["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "soon"]),
        "limit": st.integers(min_value=-(2**70), max_value=2**70),
        "after": st.text(max_size=10),
        "full": st.booleans() | st.text(max_size=3),
    },
).map(lambda doc: json.dumps(doc).encode())


_wrong_content = {
    "show": st.fixed_dictionaries(
        {"run_id": st.sampled_from(["nosuch", "base", "", "x" * 100_000]) | st.text(max_size=70)}
    ),
    "runs": st.fixed_dictionaries(
        {"limit": st.integers(min_value=-(2**63), max_value=2**63 - 1)},
        optional={
            "status": st.sampled_from(["running", "failed"]),
            "since": st.sampled_from(["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]),
        },
    ),
    "states": st.fixed_dictionaries(
        {
            "run_ids": st.lists(st.text(max_size=70), max_size=300),
            "limit": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            "after": st.text(max_size=10),
        }
    ),
    "stats": st.fixed_dictionaries({"pipeline": st.text(max_size=70)}),
}
_wrong_content["manifest"] = _wrong_content["show"]


@st.composite
def query_cases(draw: st.DrawFn) -> tuple[str, bytes]:
    verb = draw(st.sampled_from([*QUERY_VERBS, "nosuch", "Runs", "x"]))
    payload = draw(st.sampled_from(["bytes", "json", "params", "wrong content"]))
    if payload == "bytes":
        return verb, draw(st.binary(max_size=200))
    if payload == "json":
        return verb, draw(_jsonish)
    if payload == "wrong content" and verb in _wrong_content:
        return verb, json.dumps(draw(_wrong_content[verb])).encode()
    return verb, draw(_params)


async def test_fuzzed_queries_get_an_error_answer_and_the_service_keeps_answering(
    system: System,
) -> None:
    sys_ = system
    await start(sys_.bus, "slow", "base", b'{"seconds": 0.01}')
    await wait_end(sys_.bus, "base")
    answers: Counter[str] = Counter()

    async def check(case: tuple[str, bytes]) -> None:
        verb, payload = case
        answer = await query(sys_.outside, verb, payload)
        sys_.sent[f"query.{verb}" if verb in QUERY_VERBS else "query.<unknown verb>"] += 1
        if answer["ok"]:
            assert verb in QUERY_VERBS and "result" in answer, answer
            answers["ok"] += 1
        else:
            error = answer["error"]
            assert error["type"] and error["message"] and error["exit_code"] in (1, 2), error
            assert len(error["message"]) < 2_000, "an error answer must stay readable"
            answers[f"refused ({error['type']})"] += 1
        sys_.alive()

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run_hypothesis(loop, query_cases(), check, 60))
    await sys_.outside.publish("sisas.query.runs", b"{}")  # no reply subject: ignored
    sys_.sent["query without a reply subject"] += 1
    await keeps_serving(sys_, "queries")
    assert answers["ok"] + sum(v for k, v in answers.items() if k != "ok") == 60
    report_counts("sisas.query.*", sys_, **{k.replace(" ", "_"): v for k, v in answers.items()})


# -- upstream trigger subjects ---------------------------------------------------------

_not_int = st.none() | st.booleans() | st.text(max_size=8) | st.floats(allow_nan=False)


TRIGGER_ABUSES = {"bytes": 12, "json": 12, "lacks fields": 8, "wrong types": 8, "huge field": 4}


@st.composite
def trigger_cases(draw: st.DrawFn, which: str) -> Any:
    """(label, subject, bytes, Nats-Msg-Id header) of one upstream message (a function
    building it, for the huge ones)."""
    subject = "upstream.orders." + draw(_token)
    header = draw(st.none() | st.from_regex(r"[ -~]{1,80}", fullmatch=True).map(str.strip))
    if which == "bytes":
        return which, subject, draw(st.binary(max_size=300)), header or None
    if which == "json":
        return which, subject, draw(_jsonish), header or None
    if which == "lacks fields":  # ready, but without the n or the seed the rule needs
        doc = draw(
            st.fixed_dictionaries(
                {"status": st.just("ready")},
                optional={"n": st.integers(0, 9), "note": st.text(max_size=5)},
            )
        )
    elif which == "wrong types":  # ready, with a seed that is no integer
        doc = {"status": "ready", "n": draw(st.integers(0, 9) | _not_int), "seed": draw(_not_int)}
    else:
        size = draw(st.integers(10_000, 300_000))
        huge = {"status": "x" * size, "n": 1, "seed": 1}
        return lambda: (which, subject, json.dumps(huge).encode(), header or None)
    return which, subject, json.dumps(doc).encode(), header or None


_REASONS = {"status": "status_not_ready", "seed": "seed_not_int", "the": "lacks_fields"}


async def evaluations(bus: Bus, msg_id: str) -> list[TriggerEvaluated]:
    records = await bus.log.read_run(evaluation_chain(msg_id))
    return [r.signal.body for r in records if isinstance(r, StoredSignal)]  # type: ignore[misc]


async def test_fuzzed_upstream_messages_are_each_recorded_with_the_reason_and_start_nothing(
    system: System,
) -> None:
    sys_ = system
    js = sys_.outside.jetstream()
    reasons: Counter[str] = Counter()

    async def check(case: tuple[str, str, bytes, str | None]) -> None:
        label, subject, data, header = case
        headers = {"Nats-Msg-Id": header} if header else None
        started = sys_.triggers.started
        ack = await js.publish(subject, data, headers=headers)
        sys_.sent[f"upstream {label}"] += 1
        if ack.duplicate:  # the same id within the stream's window: JetStream kept one
            reasons["deduplicated by JetStream"] += 1
            return
        await handled(sys_, UPSTREAM_STREAM, "sisas-triggers", ack.seq)
        recorded = await evaluations(sys_.bus, message_id(subject, data, header))
        assert recorded, f"no trigger_evaluated for {subject}"
        last = recorded[-1]
        assert sys_.triggers.started == started, "a bad upstream message started a run"
        if last.error:
            assert last.error.startswith("the message is not JSON"), last.error
            reasons["not_JSON"] += 1
        else:
            (result,) = last.results
            assert not result.matched and result.run_id == "" and result.reason, result
            assert len(result.reason) < 2_000, "a reason must stay readable"
            if label == "lacks fields":
                assert result.reason.endswith("which the message lacks"), result.reason
            reasons[_REASONS.get(result.reason.split(" ")[0], "other")] += 1
        sys_.alive()

    loop = asyncio.get_running_loop()
    for which, examples in TRIGGER_ABUSES.items():
        await asyncio.to_thread(run_hypothesis(loop, trigger_cases(which), check, examples))
    good = b'{"status": "ready", "n": 3, "seed": 5}'
    await js.publish("upstream.orders.good", good)
    sys_.sent["upstream valid"] += 1
    msg_id = message_id("upstream.orders.good", good, None)
    (evaluation,) = await _until(lambda: evaluations(sys_.bus, msg_id), 15, "the valid message")
    assert evaluation.results[0].matched
    state, _ = await wait_end(sys_.bus, evaluation.results[0].run_id, timeout=30)
    assert state.status == "completed", state.error
    await keeps_serving(sys_, "triggers")
    report_counts(
        "upstream.orders.*",
        sys_,
        evaluations_recorded=sys_.triggers.evaluated,
        runs_started=sys_.triggers.started,
        **{k.replace(" ", "_"): v for k, v in reasons.items()},
    )


# -- sisas.run.> (the log, appended to by an outsider) ---------------------------------


@dataclass(frozen=True)
class LogCase:
    label: str
    subject: str = ""
    data: bytes = b""
    body: Any = None
    pipeline: str = "slow"
    phase: str = ""
    attempt: int = 0
    at: datetime = AT
    skip: int = 0  # seqs left out before a forged signal (a gap)
    index: int = 0  # which genuine signal of the base run to copy


_log_subjects = st.one_of(
    st.tuples(
        st.sampled_from(["slow", "chain7", "base"]) | _token,
        st.sampled_from(["base"]) | _token,
        st.sampled_from(["_", "nap", "after"]) | _token,
        st.sampled_from([*KINDS, "bogus"]),
    ).map(lambda t: "sisas.run." + ".".join(t)),
    st.lists(_token, min_size=1, max_size=6).map(lambda ts: "sisas.run." + ".".join(ts)),
)
_work = st.builds(
    PhaseScheduled,
    inputs=st.dictionaries(st.sampled_from(["input", "nap"]), st.text(max_size=70), max_size=2),
    item=st.none() | st.integers(-5, 10**6),
    items=st.none() | st.integers(-5, 10**6),
    seed=st.integers(0, 2**63 - 1),
    delay=st.floats(-1e300, 1e300) | st.sampled_from([0.0, 0.01, -1.0, 1e300]),
    timeout=st.none() | st.floats(-1e300, 1e300),
)


@st.composite
def log_cases(draw: st.DrawFn, which: str) -> LogCase:
    if which == "bytes":
        return LogCase(which, subject=draw(_log_subjects), data=draw(st.binary(max_size=300)))
    if which == "json":
        return LogCase(which, subject=draw(_log_subjects), data=draw(_jsonish))
    if which in ("tampered copy", "replayed copy", "misplaced copy"):
        return LogCase(which, index=draw(st.integers(0, 20)), attempt=draw(st.integers(1, 9)))
    return LogCase(
        which,
        body=draw(_work if which == "forged work" else bodies),
        pipeline=draw(st.sampled_from(["slow", "chain7", "other"])),
        phase=draw(st.sampled_from(["", "nap", "after", "p0", "nosuch"])),
        attempt=draw(st.integers(0, 3) | st.integers(0, 2**62)),
        at=draw(st.just(AT) | _times),
        skip=draw(st.integers(0, 3)),
    )


LOG_ABUSES = {
    "bytes": 10,
    "json": 8,
    "forged new run": 8,
    "forged work": 10,
    "forged continuation": 6,
    "broken link": 4,
    "tampered copy": 4,
    "replayed copy": 3,
    "misplaced copy": 3,
}


async def _forge(sys_: System, case: LogCase) -> tuple[str, bytes]:
    """The subject and bytes an outsider appends for ``case``."""
    genuine = [r.signal for r in await sys_.bus.log.read_run("base") if isinstance(r, StoredSignal)]
    if case.label in ("bytes", "json"):
        return case.subject, case.data
    if case.label.endswith("copy"):
        s = genuine[case.index % len(genuine)]
        data = encode_signal(s)
        subject = log_subject(s.pipeline, s.run_id, s.phase, s.kind)
        if case.label == "tampered copy":  # a changed field under the recorded hash
            data = encode_signal(msgspec.structs.replace(s, attempt=s.attempt + case.attempt))
        elif case.label == "misplaced copy":
            subject = log_subject(s.pipeline, s.run_id, s.phase, "run_cancelled")
        return subject, data
    draft = Draft(body=case.body, at=case.at, phase=case.phase, attempt=case.attempt)
    if case.label in ("forged continuation", "broken link"):
        head = ChainHead.after(genuine[-1])
        if case.label == "broken link":
            head = msgspec.structs.replace(head, hash="ab" * 32)
    else:
        head = ChainHead(pipeline=case.pipeline, run_id=_fresh(), seq=case.skip)
        if case.label == "forged work":
            head = msgspec.structs.replace(head, pipeline="slow")
            draft = msgspec.structs.replace(draft, phase=case.phase or "nap")
    forged = head.extend([draft])[0][0]
    return log_subject(forged.pipeline, forged.run_id, forged.phase, forged.kind), encode_signal(
        forged
    )


async def test_an_outsider_appending_to_the_log_is_caught_by_verify_and_stops_nothing(
    system: System,
) -> None:
    sys_ = system
    await start(sys_.bus, "slow", "base", b'{"seconds": 0.01}')
    await wait_end(sys_.bus, "base")
    js = sys_.outside.jetstream()
    forged_seqs: dict[int, str] = {}

    async def check(case: LogCase) -> None:
        subject, data = await _forge(sys_, case)
        ack = await js.publish(subject, data)
        sys_.sent[f"log {case.label}"] += 1
        forged_seqs[ack.seq] = case.label
        await _until(lambda: _now(sys_.projector.applied_seq >= ack.seq), 15, "the projector")
        sys_.alive()

    loop = asyncio.get_running_loop()
    for which, examples in LOG_ABUSES.items():
        await asyncio.to_thread(run_hypothesis(loop, log_cases(which), check, examples))
    after = await keeps_serving(sys_, "log")

    async def no_work_redelivered() -> bool:  # forged work is done or postponed, not looping
        info = await sys_.bus.js.consumer_info(WORK_STREAM, "worker-slow")
        return not info.num_redelivered

    await _until(no_work_redelivered, 20, "the worker to stop retrying forged work")
    env = server_env(sys_.settings)
    verify = await sisas_async(
        "replay", "verify", "--all", "--trust", sys_.public_key, "--json", env=env
    )
    assert verify.returncode == 1, verify.stdout + verify.stderr
    doc = json.loads(verify.stdout)
    findings = [*doc["log_findings"], *(f for v in doc["verdicts"] for f in v["findings"])]
    flagged = {f.get("stream_seq") for f in findings}
    missed = {seq: label for seq, label in forged_seqs.items() if seq not in flagged}
    assert not missed, f"forged messages verify did not flag: {missed}"
    served = [v for v in doc["verdicts"] if v["run_id"].startswith("after-")]
    assert served and all(v["intact"] and v["signed"] == "all" for v in served), served
    problems = Counter(f["problem"] for f in findings)
    report_counts(
        "sisas.run.>",
        sys_,
        verify_findings=len(findings),
        **problems,
        projector_rejected_rows=after["tables"]["rejected"],
    )


# -- sisas.live.* ----------------------------------------------------------------------


async def test_garbage_on_the_live_subjects_reaches_no_handler(system: System) -> None:
    """Workers publish progress on ``sisas.live.<run>``; no sisas handler subscribes to
    it (dashboards follow the log), so garbage there can only confuse outside readers."""
    sys_ = system
    seen: list[bytes] = []

    async def on_live(msg: Any) -> None:  # what a dashboard of one's own would receive
        seen.append(msg.data)

    await sys_.outside.subscribe("sisas.live.*", cb=on_live)

    async def check(case: tuple[str, bytes]) -> None:
        await sys_.outside.publish(f"sisas.live.{case[0]}", case[1])
        sys_.sent["live"] += 1
        sys_.alive()

    cases = st.tuples(st.sampled_from(["base"]) | _token, st.binary(max_size=300) | _jsonish)
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run_hypothesis(loop, cases, check, 30))
    await sys_.outside.flush()
    await keeps_serving(sys_, "live")
    report_counts("sisas.live.*", sys_, live_messages_seen_by_a_subscriber=len(seen))


# -- oversize payloads -----------------------------------------------------------------


async def raw_publish(url: str, subject: str, size: int) -> bytes:
    """Announce a publish of ``size`` bytes with the bare protocol (no client-side check);
    return what the server answers. Only the PUB line is sent: the server refuses on the
    size it announces, and a payload still being written when it closes the connection
    would make the kernel reset it and drop the answer unread."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await reader.readline()  # PONG
        writer.write(f"PUB {subject} {size}\r\n".encode())
        with contextlib.suppress(ConnectionError):  # the server may close before the end
            await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_oversize_payloads_are_refused_to_their_publisher_and_large_ones_are_recorded(
    system: System,
) -> None:
    sys_ = system
    nc, js = sys_.outside, sys_.outside.jetstream()
    limit = nc.max_payload
    await start(sys_.bus, "slow", "base", b'{"seconds": 0.01}')
    await wait_end(sys_.bus, "base")
    subjects = [
        "sisas.in.slow.big.start_run",
        "sisas.run.slow.base._.run_failed",
        "sisas.query.runs",
        "upstream.orders.big",
        "sisas.live.base",
    ]
    # Past the server's limit: the client refuses to send, the server refuses a client
    # that sends anyway (and closes its connection); nothing reaches sisas.
    for subject in subjects:
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.publish(subject, b"x" * (limit + 1))
        answer = await raw_publish(sys_.bus.url, subject, limit + 1)
        assert answer.startswith(b"-ERR 'Maximum Payload Violation'"), answer
        sys_.sent["past max_payload"] += 2

    # Large but allowed: each is recorded, with a reason short enough to be recorded.
    room = limit - 2_000  # headers and envelope fit beside it
    ack = await js.publish("sisas.in.slow.big.start_run", b"\x00" * room)
    assert "not JSON" in (await sys_.rejection(ack.seq))["reason"]
    huge_name = StartRun(id="start:big", pipeline="p" * room, run_id="big", at=_at())
    ack = await js.publish("sisas.in.slow.big.start_run", encode_input(huge_name))
    assert "invalid pipeline name" in (await sys_.rejection(ack.seq))["reason"]
    # A valid input whose signals would not fit the log's messages.
    wordy = StartRun(id="start:wordy", pipeline="slow", run_id="wordy", at=_at())
    fill = limit - 100 - len(encode_input(wordy)) - len(',"requested_by":""')
    wordy = msgspec.structs.replace(wordy, requested_by="w" * fill)  # the input fits
    ack = await js.publish(input_subject("slow", "wordy", "start_run"), encode_input(wordy))
    assert "max payload" in (await sys_.rejection(ack.seq))["reason"]
    assert await sys_.bus.log.last_of_run("wordy") is None
    sys_.sent["large input"] += 3

    refused = await query(nc, "show", json.dumps({"run_id": "r" * room}).encode())
    assert refused["error"]["type"] == "UnknownRun" and len(refused["error"]["message"]) < 2_000
    sys_.sent["large query"] += 1

    status = json.dumps({"status": "s" * room, "n": 1, "seed": 1}).encode()
    ack = await js.publish("upstream.orders.big", status)
    await handled(sys_, UPSTREAM_STREAM, "sisas-triggers", ack.seq)
    (evaluation,) = await evaluations(sys_.bus, message_id("upstream.orders.big", status, None))
    assert evaluation.results[0].reason.startswith("status is 'sss")
    with pytest.raises(nats.js.errors.BadRequestError, match="header size exceeds"):
        await js.publish("upstream.orders.id", b"{}", headers={"Nats-Msg-Id": "i" * 70_000})
    long_id = "i" * 60_000  # JetStream keeps headers under 64 KiB
    ack = await js.publish("upstream.orders.id", b"{}", headers={"Nats-Msg-Id": long_id})
    await handled(sys_, UPSTREAM_STREAM, "sisas-triggers", ack.seq)
    (evaluation,) = await evaluations(sys_.bus, long_id)
    assert evaluation.results[0].reason == "status is missing from the message"
    sys_.sent["large upstream"] += 3

    ack = await js.publish("sisas.run.slow.base._.run_failed", b"{" * room)
    await _until(lambda: _now(sys_.projector.applied_seq >= ack.seq), 15, "the projector")
    sys_.sent["large log message"] += 1

    result = await keeps_serving(sys_, "oversize")
    assert result["tables"]["rejected"] == 1  # the large log message, kept with its reason
    report_counts(
        "oversize",
        sys_,
        max_payload=limit,
        rejections_recorded=len(sys_.rejections),
        projector_rejected_rows=result["tables"]["rejected"],
    )


# -- pipeline files that do not import -------------------------------------------------

BAD_PIPELINES = {
    "syntax.py": ("def broken(:\n", "has a syntax error (line 1)", "fix the file"),
    "imports.py": (
        "from sisas.pipeline import Pipeline\nimport sisas_no_such_module\n",
        "does not import (line 2)",
        "install the module sisas_no_such_module",
    ),
    "raises.py": (
        "import os\nPATH = os.environ['SISAS_NO_SUCH_SETTING']\n",
        "raised KeyError when imported (line 2)",
        "fix the code that runs at import",
    ),
    "empty.py": ("X = 1\n", "defines no sisas Pipeline", "Pipeline('name')"),
}


async def test_a_pipeline_file_that_does_not_import_exits_2_naming_the_file_and_the_fix(
    system: System, tmp_path: Path
) -> None:
    sys_ = system
    inputs_before = await sys_.bus.js.stream_info(INPUT_STREAM)
    log_before = await sys_.bus.log.last_seq()
    commands: list[tuple[tuple[str, ...], Path | None, str, str]] = []
    for name, (code, problem, fix) in BAD_PIPELINES.items():
        file = tmp_path / name
        file.write_text(code)
        for command in (
            ("worker", "--pipelines", str(file)),
            ("run", "slow", "--pipelines", str(file)),
            ("run", str(file)),
        ):
            commands.append((command, file, problem, fix))
    commands.append((("worker", "--pipelines", "tests.no_such_module"), None, "", ""))
    commands.append((("worker", "--pipelines", "tests.pipelines:nosuch"), None, "", ""))
    env = server_env(sys_.settings)
    results = await asyncio.gather(*(sisas_async(*c[0], env=env) for c in commands))
    for (args, path, problem, fix), done in zip(commands, results, strict=True):
        sys_.sent[f"sisas {args[0]} with a bad pipeline"] += 1
        err = " ".join(done.stderr.split())  # rich wraps long lines
        assert done.returncode == 2, (args, done.returncode, err)
        assert "Traceback" not in err, err
        if path is not None:
            assert f"{path}" in err and problem in err and fix in err, err
        else:
            assert args[-1].split(":")[0] in err and ("check" in err or "pass" in err), err
    inputs_after = await sys_.bus.js.stream_info(INPUT_STREAM)
    assert inputs_after.state.messages == inputs_before.state.messages, "something was sent"
    assert await sys_.bus.log.last_seq() == log_before
    await keeps_serving(sys_, "pipelines")
    report_counts("pipeline files", sys_, exit_2=len(results), published=0)
