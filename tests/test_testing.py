"""sisas.testing: a pipeline run in a unit test, with no server, as docs/pipelines.md shows.

The first part of this file is the documented example, copied as it stands
(``test_the_documented_example_is_this_file`` keeps the two the same).
"""

from __future__ import annotations

import ast
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from examples.clustering import pipeline as clustering
from sisas.errors import RunFailedError, UsageError
from sisas.handlers.local import LocalRun
from sisas.pipeline import Context, Pipeline
from sisas.signals import PhaseRetryScheduled, RunCompleted, verify_chain
from sisas.testing import DEFAULT_AT, run_pipeline

ROOT = Path(__file__).parent.parent
POINTS = (ROOT / "examples" / "data" / "points.json").read_bytes()
DOC = ROOT / "docs" / "pipelines.md"

# --- the example of docs/pipelines.md, "Testing a pipeline" ---------------------------


class Scores(BaseModel):
    values: list[float]


pipeline = Pipeline("scores", version="1.0", input=Scores)


@pipeline.phase()
def clean(ctx: Context, input: Scores) -> list[float]:
    return [v for v in input.values if v >= 0]


@pipeline.phase(map_over="clean")
def square(ctx: Context, item: float) -> float:
    return item * item


@pipeline.phase(timeout=0.5, retries=2, backoff=30.0)
def total(ctx: Context, square: list[float]) -> float:
    if ctx.config.get("total.stall") and ctx.attempt == 0:
        time.sleep(5)  # past its timeout: the attempt times out and is retried
    return sum(square)


@pipeline.invariant("INV-1", phase="total", description="the total stays below 100")
def below_100(out: float) -> tuple[bool, float, float]:
    return out < 100, out, 100.0


def test_a_run_completes_with_its_outputs_and_checks() -> None:
    result = run_pipeline(pipeline, {"values": [3, -1, 4]}, seed=7)
    result.raise_for_status()
    assert result.output("clean") == [3.0, 4.0]
    assert result.output("square") == [9.0, 16.0]  # a fan-out: its items, in order
    assert result.output("total") == 25.0
    assert result.check("INV-1").passed
    assert [s.kind for s in result.signals][:2] == ["run_requested", "run_started"]
    assert verify_chain(result.signals) == []  # the log a server would record


def test_a_phase_past_its_timeout_is_retried() -> None:
    result = run_pipeline(pipeline, {"values": [3, 4]}, config={"total.stall": True})
    assert result.status == "completed"
    assert [s.kind for s in result.signals if s.phase == "total"][:6] == [
        "phase_scheduled",
        "phase_started",
        "phase_timed_out",
        "phase_retry_scheduled",
        "phase_scheduled",
        "phase_started",
    ]
    signals = result.signals
    [retry] = [s.body for s in signals if isinstance(s.body, PhaseRetryScheduled)]
    assert 15 <= retry.delay < 30  # backoff 30 s with jitter: recorded, not waited
    assert result.output("total") == 25.0


def test_a_broken_invariant_fails_the_run() -> None:
    result = run_pipeline(pipeline, {"values": [10, 20]})
    assert result.status == "failed"
    assert result.failed_phase == "total"
    check = result.check("INV-1")
    assert (check.passed, check.observed, check.expected) == (False, 500.0, 100.0)
    with pytest.raises(RunFailedError, match="total: InvariantViolation"):
        result.raise_for_status()


def test_an_input_that_breaks_the_contract_names_the_field() -> None:
    result = run_pipeline(pipeline, {"values": [1, "x"]})
    assert result.failed_phase == "clean"
    violations = result.check("entry:input:Scores").violations
    assert [v.path for v in violations] == ["input.values[1]"]


# --- end of the documented example ------------------------------------------------------


def test_the_documented_example_is_this_file() -> None:
    """The doc's example is here as it stands: what it imports among this file's
    imports, the rest in one piece, so the example passes exactly as documented."""
    [example] = re.findall(
        r"^## Testing a pipeline\n.*?^```python\n(.*?)^```", DOC.read_text(), re.M | re.S
    )
    here = Path(__file__).read_text()
    assert imported(example) <= imported(here)
    body = example[re.search(r"^class ", example, re.M).start() :]  # type: ignore[union-attr]
    assert body in here


def imported(source: str) -> set[tuple[str, str]]:
    """(module, name) of each import at the top level of ``source``."""
    out = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            out |= {(a.name, "") for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= {(node.module or "", a.name) for a in node.names}
    return out


def test_the_clustering_example_completes_with_its_outputs_and_checks() -> None:
    result = run_pipeline(clustering, json.loads(POINTS), seed=7)
    assert result.status == "completed", result.error
    assert result.output("report")["k"] == 3
    assert sum(result.output("cluster")["sizes"]) == 24
    inv = result.check("INV-7.1")
    assert (inv.kind, inv.phase, inv.passed, inv.expected) == ("invariant", "cluster", True, 1.0)
    assert all(c.passed for c in result.checks)
    assert {c.kind for c in result.checks} == {"contract", "invariant"}
    assert [s.kind for s in result.signals][:2] == ["run_requested", "run_started"]
    assert result.signals[-1].kind == "run_completed"
    assert verify_chain(result.signals) == []
    assert {s.at for s in result.signals} == {DEFAULT_AT}  # no wall clock in the log
    completed = result.signals[-1].body
    assert isinstance(completed, RunCompleted)
    assert result.outputs == completed.outputs
    assert result.fingerprint == completed.fingerprint
    assert result.raise_for_status() is result


def test_the_fingerprint_is_the_one_local_run_gives() -> None:
    local = LocalRun(clustering, "reference", at=DEFAULT_AT, clock=time.perf_counter)
    local.start(POINTS, seed=7)
    local.run()
    from_bytes = run_pipeline(clustering, input_bytes=POINTS, seed=7)
    from_value = run_pipeline(clustering, json.loads(POINTS), seed=7, run_id="other")
    assert local.state.fingerprint.startswith("sha256:")
    assert from_bytes.fingerprint == from_value.fingerprint == local.state.fingerprint
    assert run_pipeline(clustering, input_bytes=POINTS, seed=8).fingerprint != (
        local.state.fingerprint
    )


def test_a_fan_out_output_is_its_items_outputs_in_item_order() -> None:
    result = run_pipeline(clustering, input_bytes=POINTS, seed=7)
    scores = result.output("score")
    assert len(scores) == len(result.output("clean")) == 24
    assert scores == [result.output("score", item=i) for i in range(24)]
    assert json.loads(result.output_bytes("score", item=3)) == scores[3]
    with pytest.raises(UsageError, match="fan-out of 24 items"):
        result.output_bytes("score")
    with pytest.raises(UsageError, match=r"checked in 24 places \(score\[0\]"):
        result.check("exit:float")
    assert result.check("exit:float", item=5).passed


def test_a_retryable_failure_is_retried_and_its_delay_recorded_not_waited() -> None:
    result = run_pipeline(clustering, input_bytes=POINTS, seed=7, config={"clean.flaky": True})
    assert result.status == "completed"
    signals = result.signals
    [retry] = [s.body for s in signals if isinstance(s.body, PhaseRetryScheduled)]
    assert 0.025 <= retry.delay < 0.05
    assert result.fingerprint == run_pipeline(clustering, input_bytes=POINTS, seed=7).fingerprint


def overrunning(*, fails_once: bool, retries: int = 1) -> Pipeline:
    pipe = Pipeline("overrun", version="1")

    @pipe.phase(timeout=0.2, retries=retries, backoff=60.0)
    def slow(ctx: Context, input: int) -> int:
        if ctx.attempt == 0 or not fails_once:
            time.sleep(5)
        return input + 1

    @pipe.phase()
    def after(ctx: Context, slow: int) -> int:
        return slow * 10

    return pipe


def test_a_phase_past_its_timeout_is_recorded_timed_out_and_retried() -> None:
    result = run_pipeline(overrunning(fails_once=True), 1)
    assert result.status == "completed"
    assert [(s.kind, s.attempt) for s in result.signals if s.phase == "slow"] == [
        ("phase_scheduled", 0),
        ("phase_started", 0),
        ("phase_timed_out", 0),
        ("phase_retry_scheduled", 0),
        ("phase_scheduled", 1),
        ("phase_started", 1),
        ("contract_checked", 1),
        ("contract_checked", 1),
        ("phase_completed", 1),
    ]
    assert result.output("after") == 20
    assert result.state.phase("slow").attempt == 1


def test_a_phase_past_its_timeout_every_time_fails_the_run_with_timeout() -> None:
    result = run_pipeline(overrunning(fails_once=False), 1)
    assert result.status == "failed"
    assert result.failed_phase == "slow"
    assert result.error is not None and result.error.kind == "Timeout"
    assert [s.kind for s in result.signals].count("phase_timed_out") == 2  # retries=1
    assert result.signals[-1].kind == "run_failed"
    assert "after" not in result.outputs  # the run ended at slow's failure
    with pytest.raises(UsageError, match="slow has no output: it timed out"):
        result.output("slow")
    with pytest.raises(RunFailedError, match="at phase slow: Timeout") as raised:
        result.raise_for_status()
    assert (raised.value.phase, raised.value.kind) == ("slow", "Timeout")


def test_an_item_past_its_timeout_leaves_none_in_a_partial_fan_out() -> None:
    pipe = Pipeline("partial", version="1")

    @pipe.phase()
    def items(ctx: Context, input: list[int]) -> list[int]:
        return input

    @pipe.phase(map_over="items", partial=True, timeout=0.2)
    def double(ctx: Context, item: int) -> int:
        if item < 0:
            time.sleep(5)
        return item * 2

    result = run_pipeline(pipe, [1, -1, 3])
    assert result.status == "completed"
    assert result.output("double") == [2, None, 6]
    assert result.state.phase("double").item_states[1].status == "timed_out"
    with pytest.raises(UsageError, match="item 1 of double has no output: it is timed out"):
        result.output_bytes("double", item=1)


def test_an_input_that_breaks_the_contract_fails_naming_each_field_path() -> None:
    result = run_pipeline(clustering, {"name": "", "values": [1.0, "x"], "k": 99})
    assert result.status == "failed"
    assert result.failed_phase == "load"
    assert result.error is not None and result.error.kind == "ContractViolation"
    for path in ("input.name", "input.values[1]", "input.k"):
        assert path in result.error.message
    check = result.check("entry:input:Points")
    assert not check.passed
    assert {v.path for v in check.violations} == {"input.name", "input.values[1]", "input.k"}
    assert result.fingerprint == ""
    with pytest.raises(RunFailedError, match=r"at phase load: ContractViolation: .*input\.k"):
        result.raise_for_status()
    with pytest.raises(UsageError, match=r"cluster has no output: the run ended \(failed\)"):
        result.output("cluster")


def test_bytes_that_are_not_json_break_the_first_contract() -> None:
    result = run_pipeline(clustering, input_bytes=b"not json")
    assert (result.status, result.failed_phase) == ("failed", "load")
    assert result.error is not None and result.error.kind == "ContractViolation"


def test_raise_for_status_carries_the_phase_traceback() -> None:
    pipe = Pipeline("crashing", version="1")

    @pipe.phase()
    def divide(ctx: Context, input: int) -> float:
        return 1 / input

    result = run_pipeline(pipe, 0)
    with pytest.raises(RunFailedError) as raised:
        result.raise_for_status()
    err = raised.value
    assert (err.run_id, err.status, err.phase, err.kind) == (
        "crashing-test",
        "failed",
        "divide",
        "HardFailure",
    )
    assert "ZeroDivisionError: division by zero" in str(err)
    assert "return 1 / input" in err.detail


def test_a_skipped_phase_has_no_output_until_enabled() -> None:
    result = run_pipeline(clustering, input_bytes=POINTS)
    with pytest.raises(UsageError, match=r"publish has no output: it was skipped \(disabled\)"):
        result.output("publish")
    with pytest.raises(UsageError, match="has no phase 'nosuch'"):
        result.output("nosuch")
    with pytest.raises(UsageError, match="no check 'INV-0'"):
        result.check("INV-0")
    enabled = run_pipeline(clustering, input_bytes=POINTS, config={"publish.enabled": True})
    assert enabled.output("publish") == enabled.output("report")["summary"]


def test_arguments_that_cannot_make_a_run_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not both"):
        run_pipeline(clustering, {"values": []}, input_bytes=POINTS)
    with pytest.raises(UsageError, match="cannot be sent as JSON"):
        run_pipeline(clustering, object())
    with pytest.raises(UsageError, match="has no timezone"):
        run_pipeline(clustering, input_bytes=POINTS, at=datetime(2026, 1, 1))  # noqa: DTZ001
    at = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert {s.at for s in run_pipeline(clustering, input_bytes=POINTS, at=at).signals} == {at}


def test_each_attempts_log_is_kept_with_the_traceback() -> None:
    from tests.pipelines import chatty

    result = run_pipeline(chatty, {"rows": 0, "lines": 2})
    assert result.status == "completed"
    first = result.log("talk", attempt=0)
    assert "INFO reading 0 rows" in first and "RuntimeError: the first attempt fails" in first
    assert "not kept" not in first  # DEBUG
    assert result.log("talk").splitlines()[-1].endswith("INFO line 1")  # the last attempt
    assert "WARNING about to hang with 0 rows" in result.log("hang")
    assert "stdout printed by attempt 1" in result.log("talk")  # print, as a worker keeps it
    with pytest.raises(UsageError, match=r"hang has no attempt 5 \(attempts 0 to 0\)"):
        result.log("hang", attempt=5)
    with pytest.raises(UsageError, match="has no phase 'nosuch'"):
        result.log("nosuch")
    hung = run_pipeline(chatty, {"rows": 1, "lines": 0})  # hang overruns its 1 s timeout
    assert hung.status == "failed" and hung.failed_phase == "hang"
    text = hung.log("hang")
    assert "WARNING about to hang with 1 rows" in text and "stdout last words" in text
    assert "abandoned after its timeout of 1.0s" in text
