"""The orchestration rules, driven in-process (pure decide + phase execution)."""

from __future__ import annotations

import gc
import json
import time

import msgspec
import pytest

from examples.clustering import pipeline as clustering
from sisas.errors import InvalidPipeline
from sisas.handlers.local import LocalRun
from sisas.handlers.orchestrator import decide
from sisas.handlers.state import RunState, fold
from sisas.pipeline import Context, Pipeline
from sisas.signals import (
    ContractChecked,
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    PhaseRetryScheduled,
    PhaseScheduled,
    PhaseSkipped,
    RunFailed,
    RunStarted,
    decode_signal,
    encode_signal,
)
from sisas.signals.inputs import CancelRun, PhaseReport, StartRun
from tests.pipelines import Weights, small
from tests.runs import AT, POINTS, run_of, validator, verify_signals


def kinds(run: LocalRun, phase: str | None = None) -> list[str]:
    return [s.kind for s in run.signals if phase is None or s.phase == phase]


def test_the_example_runs_to_completion_and_every_signal_matches_its_schema() -> None:
    run = run_of(clustering)
    assert run.state.status == "completed"
    assert run.state.fingerprint.startswith("sha256:")
    assert kinds(run)[:2] == ["run_requested", "run_started"]
    assert kinds(run)[-1] == "run_completed"
    assert kinds(run, "publish") == ["phase_skipped"]  # side effects are opt-in
    for s in run.signals:
        wire = json.loads(encode_signal(s))
        assert validator(s.kind).is_valid(wire), s.kind
    assert fold(run.signals) == run.state  # the log alone rebuilds the state


def test_same_seed_same_fingerprint_different_seed_different_fingerprint() -> None:
    a, b, c = run_of(clustering), run_of(clustering, run_id="r2"), run_of(clustering, seed=8)
    assert a.state.fingerprint == b.state.fingerprint
    assert a.state.fingerprint != c.state.fingerprint


def test_fan_out_items_gathered_in_item_order_whatever_order_they_finish() -> None:
    forward = run_of(clustering)
    backward = LocalRun(clustering, "rb", at=AT, clock=time.perf_counter)
    backward.start(POINTS, seed=7)
    while not backward.state.ended:
        pending = backward.pending_work()
        assert pending
        backward.work(pending[-1])  # always the last scheduled item first
    assert backward.state.fingerprint == forward.state.fingerprint
    items = [
        s.body.item
        for s in forward.signals
        if isinstance(s.body, PhaseScheduled) and s.phase == "score"
    ]
    assert items == list(range(24))


def test_a_retryable_failure_is_retried_with_a_seeded_backoff() -> None:
    run = run_of(clustering, **{"clean.flaky": True})
    assert run.state.status == "completed"
    assert kinds(run, "clean")[:6] == [
        "phase_scheduled",
        "phase_started",
        "contract_checked",
        "phase_failed",
        "phase_retry_scheduled",
        "phase_scheduled",
    ]
    retry = next(s.body for s in run.signals if isinstance(s.body, PhaseRetryScheduled))
    assert retry.next_attempt == 1
    assert 0.025 <= retry.delay < 0.05  # base 0.05 with jitter in [0.5, 1)
    again = run_of(clustering, run_id="r9", **{"clean.flaky": True})
    assert (
        next(s.body for s in again.signals if isinstance(s.body, PhaseRetryScheduled)).delay
        == retry.delay
    )
    assert run.state.fingerprint == run_of(clustering).state.fingerprint


def test_an_input_that_breaks_the_contract_fails_the_run_naming_each_field() -> None:
    bad = json.dumps({"name": "", "values": [1.0, "x"], "k": 99}).encode()
    run = run_of(clustering, bad)
    assert run.state.status == "failed"
    assert run.state.failed_phase == "load"
    check = next(s.body for s in run.signals if isinstance(s.body, ContractChecked))
    assert check.boundary == "entry"
    assert not check.passed
    assert {v.path for v in check.violations} == {"input.name", "input.values[1]", "input.k"}
    failed = next(s.body for s in run.signals if isinstance(s.body, RunFailed))
    assert failed.error.kind == "ContractViolation"


def test_a_broken_invariant_fails_the_run_with_observed_and_expected() -> None:
    run = run_of(small(broken=True), b"[1, 3]")
    inv = next(s.body for s in run.signals if isinstance(s.body, InvariantChecked))
    assert (inv.invariant, inv.passed, inv.observed, inv.expected) == ("INV-1", False, 2.0, 1.0)
    assert run.state.status == "failed"
    assert run.state.error is not None and run.state.error.kind == "InvariantViolation"


def test_a_non_fatal_failure_lets_the_run_go_on_without_that_output() -> None:
    run = run_of(small(fatal=False), b"[1, 3]")
    assert run.state.status == "completed"
    assert run.state.phase("optional").status == "failed"
    skipped = next(s.body for s in run.signals if s.phase == "after")
    assert isinstance(skipped, PhaseSkipped) and skipped.reason == "upstream_failed"
    assert run.state.phase("independent").status == "completed"


def test_disabling_a_phase_skips_it_and_what_needs_it() -> None:
    run = run_of(clustering, **{"score.enabled": False})
    assert run.state.status == "completed"
    assert run.state.phase("score").skip_reason == "disabled"
    # nothing failed: score was switched off
    assert run.state.phase("cluster").skip_reason == "upstream_disabled"
    assert run.state.phase("load").status == "completed"
    enabled = run_of(clustering, **{"publish.enabled": True})
    assert enabled.state.phase("publish").status == "completed"


def test_duplicate_stale_and_late_reports_change_nothing() -> None:
    run = run_of(clustering)
    plans = {"clustering": clustering.plan()}
    last = run.state
    common = {"pipeline": "clustering", "run_id": "r1", "at": AT, "worker": "w"}
    for report in (
        PhaseReport(id="x1", phase="load", attempt=0, status="completed", **common),
        PhaseReport(id="x2", phase="load", attempt=5, status="failed", **common),
        PhaseReport(id="x3", phase="nope", attempt=0, status="started", **common),
        StartRun(id="x4", pipeline="clustering", run_id="r1", at=AT),
        CancelRun(id="x5", pipeline="clustering", run_id="r1", at=AT),
    ):
        assert decide(last, report, plans) == []  # type: ignore[arg-type]


def test_cancel_ends_the_run_and_later_reports_are_ignored() -> None:
    run = LocalRun(clustering, "rc", at=AT, clock=time.perf_counter)
    run.start(POINTS, seed=1)
    work = run.pending_work()[0]
    run.send(CancelRun(id="c", pipeline="clustering", run_id="rc", at=AT, reason="operator"))
    assert run.state.status == "cancelled"
    before = len(run.signals)
    run.work(work)
    assert len(run.signals) == before


def test_an_unknown_pipeline_fails_the_run_and_says_how_to_fix_it() -> None:
    run = LocalRun(clustering, "ru", at=AT, clock=time.perf_counter)
    out = decide(run.state, StartRun(id="s", pipeline="nope", run_id="ru", at=AT), {})
    assert [s.kind for s in out] == ["run_requested", "run_failed"]
    assert "not registered" in out[-1].body.error.message  # type: ignore[union-attr]


def test_definitions_that_cannot_run_are_refused_at_registration() -> None:
    p = Pipeline("bad")

    @p.phase()
    def a(ctx: Context, b: int) -> int:
        return b

    @p.phase()
    def b(ctx: Context, a: int) -> int:
        return a

    with pytest.raises(InvalidPipeline, match="cycle"):
        p.plan()
    q = Pipeline("bad2")

    @q.phase()
    def c(ctx: Context, missing: int) -> int:
        return missing

    with pytest.raises(InvalidPipeline, match="not a phase"):
        q.plan()
    with pytest.raises(InvalidPipeline, match="defined twice"):
        q.phase(name="c")(lambda ctx: 1)
    with pytest.raises(InvalidPipeline, match="first parameter"):
        q.phase(name="d")(lambda x: 1)


def test_a_phase_circuit_opens_across_runs_holds_work_back_and_closes_on_success() -> None:
    from datetime import timedelta

    from sisas.signals import CircuitClosed, CircuitOpened
    from tests.pipelines import breaker

    circuits: dict = {}
    runs = []
    for i, data in enumerate([b'"bad"', b'"bad"', b'"good"', b'"good"']):
        at = AT + timedelta(seconds=0.1 * i)
        run = LocalRun(breaker, f"b{i}", at=at, clock=time.perf_counter, circuits=circuits)
        run.start(data)
        run.run()
        runs.append(run)
    opened = [s.body for s in runs[1].signals if isinstance(s.body, CircuitOpened)]
    assert len(opened) == 1
    assert opened[0].scope == "breaker.fragile"
    assert opened[0].failures == 2
    assert not any(isinstance(s.body, CircuitOpened) for s in runs[0].signals)
    held = next(s.body for s in runs[2].signals if isinstance(s.body, PhaseScheduled))
    assert held.delay == pytest.approx(0.9)  # opened at +0.1 s, cool-down 1 s, now +0.2 s
    assert any(isinstance(s.body, CircuitClosed) for s in runs[2].signals)
    after = next(s.body for s in runs[3].signals if isinstance(s.body, PhaseScheduled))
    assert after.delay == 0.0
    assert circuits["fragile"].opened_at is None


def fan(partial: bool = False) -> Pipeline:
    """Items 1 and 3 fail their first attempt; item 3 fails every attempt."""
    pipe = Pipeline("fan", version="1")

    @pipe.phase()
    def source(ctx: Context, input: list[int]) -> list[int]:
        return input

    @pipe.phase(map_over="source", retries=1, backoff=0.01, partial=partial)
    def work(ctx: Context, item: int) -> int:
        if item == 3 or (item == 1 and ctx.attempt == 0):
            raise RuntimeError(f"item {item} attempt {ctx.attempt}")
        return item * 10

    @pipe.phase()
    def total(ctx: Context, work: list[int | None]) -> list[int | None]:
        return work

    return pipe


def test_a_fanned_out_item_that_succeeds_on_retry_is_gathered() -> None:
    run = run_of(fan(), b"[0, 1, 2]")
    assert run.state.status == "completed", run.state.error
    assert run.state.phase("work").items == 3
    assert kinds(run, "work").count("phase_retry_scheduled") == 1
    assert _verify_intact(run)


def test_a_partial_fan_out_completes_with_null_for_the_item_that_failed_for_good() -> None:
    strict = run_of(fan(), b"[0, 1, 3]")
    assert (strict.state.status, strict.state.failed_phase) == ("failed", "work")
    run = run_of(fan(partial=True), b"[0, 1, 3]")
    assert run.state.status == "completed", run.state.error
    assert run.state.phase("work").item_states[2].status == "failed"
    done = [s for s in run.signals if s.phase == "total" and isinstance(s.body, PhaseCompleted)]
    assert json.loads(run.artifacts[done[-1].body.artifact]) == [0, 10, None]  # type: ignore[union-attr]
    assert _verify_intact(run)


def test_partial_needs_a_fan_out() -> None:
    pipe = Pipeline("p", version="1")
    with pytest.raises(InvalidPipeline, match="partial=True is for a fan-out"):

        @pipe.phase(partial=True)
        def lone(ctx: Context, input: int) -> int:
            return input


def test_an_output_that_breaks_its_contract_is_quarantined_not_passed_on() -> None:
    pipe = Pipeline("q", version="1")

    @pipe.phase()
    def make(ctx: Context, input: int) -> Weights:
        return {"weights": "not a list"}  # type: ignore[return-value]

    @pipe.phase()
    def use(ctx: Context, make: Weights) -> int:
        return len(make.weights)

    run = run_of(pipe, b"1")
    [failed] = [s.body for s in run.signals if isinstance(s.body, PhaseFailed)]
    assert failed.error.kind == "ContractViolation"
    assert json.loads(run.artifacts[failed.quarantined_artifact]) == {"weights": "not a list"}
    assert run.state.phase("make").quarantined == failed.quarantined_artifact
    assert run.state.phase("use").status == "pending"


def _verify_intact(run: LocalRun) -> bool:
    return verify_signals(run.signals).intact


def test_an_outcome_that_overtakes_its_started_report_records_the_start_first() -> None:
    # Two orchestrators may take a worker's "completed" before its "started".
    plans = {"clustering": clustering.plan()}
    digest = "sha256:" + "1" * 64
    start = StartRun(id="s", pipeline="clustering", run_id="r1", at=AT, seed=7, input_digest=digest)
    signals = decide(RunState.new("clustering", "r1"), start, plans)  # type: ignore[arg-type]
    first = next(s for s in signals if s.kind == "phase_scheduled")
    common = {"pipeline": "clustering", "run_id": "r1", "at": AT, "worker": "w2"}
    done = PhaseReport(
        id="d",
        phase=first.phase,
        attempt=0,
        status="completed",
        output_digest=digest,
        artifact=digest,
        **common,  # type: ignore[arg-type]
    )
    out = decide(fold(signals), done, plans)  # type: ignore[arg-type]
    out_kinds = [s.kind for s in out]
    assert out_kinds[0] == "phase_started"  # recorded first, naming the reporting worker
    assert out[0].body.worker == "w2"  # type: ignore[union-attr]
    assert "phase_completed" in [s.kind for s in out]
    late = PhaseReport(id="l", phase=first.phase, attempt=0, status="started", **common)  # type: ignore[arg-type]
    assert decide(fold([*signals, *out]), late, plans) == []  # type: ignore[arg-type]


def test_folded_runs_share_equal_plans_and_a_forged_plan_stays_its_own() -> None:
    """Thousands of cached run states hold one plan per pipeline version (memory and
    the garbage collector's work), and the signals and states it keeps are not tracked
    by the collector; sharing goes by equality, so a plan changed under a known
    fingerprint is folded as it was recorded."""
    a, b = run_of(clustering, run_id="r1"), run_of(clustering, run_id="r2")
    stored_a = [decode_signal(encode_signal(s)) for s in a.signals]  # as read from a log
    stored_b = [decode_signal(encode_signal(s)) for s in b.signals]
    assert stored_a[1].body is not stored_b[1].body
    plan_a, plan_b = fold(stored_a).plan, fold(stored_b).plan
    assert plan_a is not None and plan_a is plan_b
    started = stored_b[1]
    assert isinstance(started.body, RunStarted) and started.body.plan is not None
    changed = msgspec.structs.replace(
        started.body.plan, phases=started.body.plan.phases[:-1]
    )  # same fingerprint, one phase fewer
    forged = msgspec.structs.replace(
        started, body=msgspec.structs.replace(started.body, plan=changed)
    )
    state = fold([stored_b[0], forged])
    assert state.plan == changed and state.plan is not plan_a
    assert len(state.phases) == len(plan_a.phases) - 1
    for obj in (a.signals[-1], a.signals[-1].body, a.state, plan_a, plan_a.phases[0]):
        assert not gc.is_tracked(obj), type(obj).__name__
