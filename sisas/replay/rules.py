"""Where a signal may stand: the run's state before it decides which kinds are legal.

The hash chain proves that no stored signal was changed, removed or reordered; it
cannot tell a signal the orchestrator decided from one an outside client forged with a
correct link. These rules catch forgeries that do not fit the run: a report for an
attempt that was never scheduled, a phase that is not in the plan, anything after the
run ended, a completion whose fingerprint does not follow from the run's outputs and
checks, a phase scheduled with inputs other than its dependencies' outputs. A forgery
that fits every rule is caught only by signatures (:mod:`sisas.signals.signing`).

Pure: ``violation(state, signal)`` reads nothing but its arguments.
"""

from __future__ import annotations

from sisas.handlers.derive import derive_seed, run_fingerprint
from sisas.handlers.orchestrator import gathered_digest, satisfied, scheduled_inputs
from sisas.handlers.state import ItemState, PhaseState, RunState
from sisas.signals.digest import semantic_digest
from sisas.signals.envelope import Signal
from sisas.signals.kinds import (
    BackfillFinished,
    BackfillRequested,
    CircuitClosed,
    CircuitOpened,
    ContractChecked,
    InvariantChecked,
    PartitionLaunched,
    PartitionSkipped,
    PhaseCompleted,
    PhaseFailed,
    PhaseRetryScheduled,
    PhaseScheduled,
    PhaseSkipped,
    PhaseStarted,
    PhaseTimedOut,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunQueued,
    RunReleased,
    RunRequested,
    RunStarted,
    RunWithdrawn,
    ScheduleTicked,
    TriggerEvaluated,
)
from sisas.signals.names import (
    ADMISSION_PIPELINE,
    BACKFILLS_PIPELINE,
    SCHEDULES_PIPELINE,
    TRIGGERS_PIPELINE,
)

__all__ = ["violation"]

_LIVE = ("scheduled", "running")
_DONE = ("completed", "failed", "timed_out", "skipped")
_BACKFILL_KINDS: frozenset[type] = frozenset(
    {BackfillRequested, PartitionLaunched, PartitionSkipped, BackfillFinished}
)
_ATTEMPT_KINDS: frozenset[type] = frozenset(
    {PhaseStarted, PhaseCompleted, PhaseFailed, PhaseTimedOut, ContractChecked, InvariantChecked}
)


def violation(state: RunState, signal: Signal) -> tuple[str, str] | None:
    """``(problem, message)`` when ``signal`` cannot follow ``state``; None when it can."""
    body = signal.body
    t = type(body)  # bodies are final classes: comparing types is exact (and cheap)
    if t is TriggerEvaluated:  # a chain of evaluations of one upstream message
        if state.status == "new" and signal.pipeline == TRIGGERS_PIPELINE:
            return None
        return "out_of_place", "trigger_evaluated belongs to a triggers chain, not a run"
    if t is ScheduleTicked:  # a chain of one schedule's ticks
        if state.status == "new" and signal.pipeline == SCHEDULES_PIPELINE:
            return None
        return "out_of_place", "schedule_ticked belongs to a schedules chain, not a run"
    if t is RunQueued or t is RunReleased or t is RunWithdrawn:  # an admission chain
        if state.status == "new" and signal.pipeline == ADMISSION_PIPELINE:
            return None
        return "out_of_place", f"{signal.kind} belongs to an admission chain, not a run"
    if t in _BACKFILL_KINDS:  # a backfill's chain: its rounds and partitions
        if state.status == "new" and signal.pipeline == BACKFILLS_PIPELINE:
            return None
        return "out_of_place", f"{signal.kind} belongs to a backfill chain, not a run"
    if signal.seq == 1 and t is not RunRequested:
        return "out_of_place", f"a run begins with run_requested, not {signal.kind}"
    if state.ended:
        return "out_of_place", f"{signal.kind} after the run ended ({state.status})"
    if t is RunRequested:
        return None if signal.seq == 1 else ("out_of_place", "run_requested again mid-run")
    if t is RunStarted:
        if state.status != "requested":
            return "out_of_place", f"run_started while the run is {state.status}"
        return None
    if t is RunCancelled or t is RunFailed:
        return None
    if state.status != "running" or state.plan is None:
        return "out_of_place", f"{signal.kind} before the run started"
    if isinstance(body, RunCompleted):
        return _completion(state, body)
    if t is CircuitOpened or t is CircuitClosed:
        return None
    if signal.phase not in state.phases:
        return "out_of_place", f"phase {signal.phase!r} is not in the run's plan"
    return _phase_rule(state, signal)


def _completion(state: RunState, body: RunCompleted) -> tuple[str, str] | None:
    open_phases = [n for n, p in state.phases.items() if p.status not in _DONE]
    if open_phases:
        return "out_of_place", f"run_completed while {', '.join(open_phases)} had not ended"
    outputs = {n: p.output_digest for n, p in state.phases.items() if satisfied(p)}
    if body.outputs != outputs:
        return "bad_fingerprint", "run_completed lists outputs that differ from its phases'"
    expected = run_fingerprint(outputs, state.checks)
    if body.fingerprint != expected:
        return (
            "bad_fingerprint",
            f"run_completed records fingerprint {body.fingerprint[:19]}…, its outputs "
            f"and checks give {expected[:19]}…",
        )
    return None


def _target(phase: PhaseState, item: int | None) -> PhaseState | ItemState | None:
    return phase if item is None else phase.item_states.get(item)


def _attempt_rule(
    signal: Signal, target: PhaseState | ItemState | None, statuses: tuple[str, ...]
) -> tuple[str, str] | None:
    item = getattr(signal.body, "item", None)
    where = signal.phase + ("" if item is None else f"[{item}]")
    if target is None:
        return "out_of_place", f"{signal.kind} for {where}, which was never scheduled"
    if target.attempt != signal.attempt:
        return (
            "out_of_place",
            f"{signal.kind} for attempt {signal.attempt} of {where}, "
            f"whose current attempt is {target.attempt}",
        )
    if target.status not in statuses:
        return "out_of_place", f"{signal.kind} for {where} while it is {target.status}"
    return None


def _phase_rule(state: RunState, signal: Signal) -> tuple[str, str] | None:
    body = signal.body
    phase = state.phase(signal.phase)
    item: int | None = getattr(body, "item", None)
    if isinstance(body, PhaseScheduled):
        return _scheduling(state, signal, body, phase)
    if isinstance(body, PhaseSkipped):
        if phase.status != "pending":
            return "out_of_place", f"phase_skipped for {signal.phase} while it is {phase.status}"
        return None
    if isinstance(body, PhaseCompleted) and item is None and phase.items is not None:
        return _gathered(state, signal, body, phase)
    if isinstance(body, PhaseCompleted) and item is None and phase.status == "pending":
        if body.item_count == 0 and body.output_digest == semantic_digest([]):
            return None  # a fan-out over an empty list completes at once
        return "out_of_place", f"phase_completed for {signal.phase}, which was never scheduled"
    if isinstance(body, PhaseFailed) and item is None:
        if phase.items is not None and phase.status == "running":
            return None  # an item failed non-fatally: the fan-out fails as a whole
        if phase.status == "pending" and _not_a_list(state, signal.phase):
            return None  # the output to fan out over is not a list
    if isinstance(body, PhaseRetryScheduled):
        if body.next_attempt != signal.attempt + 1:
            return "out_of_place", f"retry {body.next_attempt} after attempt {signal.attempt}"
        return _attempt_rule(signal, _target(phase, item), ("failed", "timed_out"))
    if type(body) in _ATTEMPT_KINDS:
        return _attempt_rule(signal, _target(phase, item), _LIVE)
    return None  # pragma: no cover - every phase kind is handled above


def _not_a_list(state: RunState, name: str) -> bool:
    """A fan-out whose upstream completed without a list (``item_count`` unset)."""
    assert state.plan is not None
    over = state.plan.phase(name).map_over
    return (
        bool(over)
        and state.phase(over).status == "completed"
        and (state.phase(over).item_count is None)
    )


def _scheduling(
    state: RunState, signal: Signal, body: PhaseScheduled, phase: PhaseState
) -> tuple[str, str] | None:
    target = _target(phase, body.item)
    if signal.attempt == 0:
        fresh = target is None or (body.item is None and phase.status == "pending")
        if not fresh:
            return "out_of_place", f"{signal.phase} scheduled a second time as attempt 0"
    elif target is None or target.status != "retrying" or target.attempt + 1 != signal.attempt:
        return "out_of_place", f"attempt {signal.attempt} of {signal.phase} without a retry"
    if body.seed != derive_seed(state.seed, signal.phase, body.item):
        return "bad_fingerprint", f"{signal.phase} scheduled with a seed not derived from the run's"
    assert state.plan is not None
    inputs, gathered = scheduled_inputs(state, state.plan.phase(signal.phase))
    if body.inputs != inputs or body.gathered != gathered:
        return (
            "bad_fingerprint",
            f"{signal.phase} scheduled with inputs other than its dependencies' outputs",
        )
    return None


def _gathered(
    state: RunState, signal: Signal, body: PhaseCompleted, phase: PhaseState
) -> tuple[str, str] | None:
    assert state.plan is not None
    expected = gathered_digest(state.plan.phase(signal.phase), phase)
    if phase.status != "running" or expected is None:
        return "out_of_place", f"{signal.phase} gathered before all its items ended"
    if body.output_digest != expected:
        return "bad_fingerprint", f"{signal.phase}'s digest is not the digest of its items'"
    return None
