"""The state of a run, folded from its signals: ``evolve(state, signal) -> state``.

Pure and total: every kind is handled, nothing reads the clock. The orchestrator's
in-memory state and the DuckDB projection are two views of this fold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Final, Literal, TypeAlias

import msgspec
from msgspec.structs import replace

from sisas.handlers.tables import CheckTable, ItemState, ItemTable, PhaseStatus, enc_hook
from sisas.signals.chain import ChainHead
from sisas.signals.envelope import Signal
from sisas.signals.kinds import (
    BackfillFinished,
    BackfillRequested,
    CircuitClosed,
    CircuitOpened,
    ContractChecked,
    ErrorInfo,
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
    Scalar,
    ScheduleTicked,
    TriggerEvaluated,
)
from sisas.signals.plan import PipelinePlan

__all__ = [
    "CheckTable",
    "ItemState",
    "ItemTable",
    "PhaseState",
    "PhaseStatus",
    "RunState",
    "RunStatus",
    "attempt_status",
    "evolve",
    "fold",
    "state_digest",
]

_UNSETTLED: frozenset[str] = frozenset({"pending", "scheduled", "running", "retrying"})
RunStatus: TypeAlias = Literal["new", "requested", "running", "completed", "failed", "cancelled"]
_STATE_JSON = msgspec.json.Encoder(order="sorted")
TERMINAL_RUN: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class PhaseState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A phase of a run: where it is, its latest attempt, its output or error."""

    status: PhaseStatus = "pending"
    attempt: int = 0
    worker: str = ""
    output_digest: str = ""
    artifact: str = ""
    item_count: int | None = None
    error: ErrorInfo | None = None
    quarantined: str = ""
    """The artifact of the last failed attempt's output, kept as evidence, never used."""
    skip_reason: str = ""
    items: int | None = None
    item_states: ItemTable = ItemTable()
    """The items of a fan-out by index (a persistent map: see :mod:`sisas.handlers.tables`)."""
    duration: float = 0.0
    """Seconds the phase's successful attempt ran (summed over items when fanned out)."""
    inputs: dict[str, str] = {}
    """The artifacts of its dependencies it was last scheduled with, by parameter name."""
    scheduled_at: datetime | None = None
    """When it was first scheduled (its first item, when fanned out)."""
    ended_at: datetime | None = None
    """When it last completed, failed, timed out or was skipped."""


class RunState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Everything the orchestrator knows about a run, rebuilt from its log."""

    run_id: str
    pipeline: str
    head: ChainHead
    status: RunStatus = "new"
    seed: int = 0
    plan: PipelinePlan | None = None
    input_digest: str = ""
    config: dict[str, Scalar] = {}
    phases: dict[str, PhaseState] = {}
    checks: CheckTable = CheckTable()
    fingerprint: str = ""
    error: ErrorInfo | None = None
    failed_phase: str = ""
    resume_of: str = ""
    batch_id: str = ""
    tags: dict[str, str] = {}
    requested_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def new(cls, pipeline: str, run_id: str) -> RunState:
        return cls(
            run_id=run_id, pipeline=pipeline, head=ChainHead(pipeline=pipeline, run_id=run_id)
        )

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_RUN

    def phase(self, name: str) -> PhaseState:
        return self.phases.get(name, _NEW_PHASE)


def _set_phase(state: RunState, name: str, phase: PhaseState) -> RunState:
    return replace(state, phases={**state.phases, name: phase})


_NEW_ITEM = ItemState()
_NEW_PHASE = PhaseState()


def _set_item(state: RunState, name: str, item: int, **changes: object) -> RunState:
    """One item changed: O(log32 N) for a fan-out of N items, the rest shared."""
    phase = state.phase(name)
    current = phase.item_states.get(item, _NEW_ITEM)
    items = phase.item_states.set(item, replace(current, **changes))
    return _set_phase(state, name, replace(phase, item_states=items))


def check_key(signal: Signal, name: str, item: int | None) -> str:
    suffix = "" if item is None else f"[{item}]"
    return f"{signal.phase}{suffix}:{name}"


_PLANS: dict[str, PipelinePlan] = {}


def _shared(plan: PipelinePlan | None) -> PipelinePlan | None:
    """One object for equal plans: runs of a pipeline version hold the same plan, and
    a process folding thousands of runs keeps one copy (and the garbage collector one
    set of its lists) instead of one per run. Equality, not the fingerprint, decides:
    a forged plan under a known fingerprint stays its own object."""
    if plan is None:
        return None
    known = _PLANS.get(plan.fingerprint)
    if known is not None and known == plan:
        return known
    if len(_PLANS) >= 256:
        _PLANS.clear()
    _PLANS[plan.fingerprint] = plan
    return plan


def evolve(state: RunState, signal: Signal) -> RunState:
    """The state after ``signal``. Pure; unknown combinations leave the state as is.

    One arm per kind of body: a run's own signals change the run, a phase's signals its
    phase (or one item of a fanned-out phase), checks the table of check results.
    """
    state = replace(state, head=ChainHead.after(signal))
    name = signal.phase
    # The arms go from the most frequent kind to the rarest (checks, then each attempt's
    # start, schedule and completion make most of a log): every arm passed costs an
    # isinstance, about 0.1 us on a msgspec Struct, and this runs once per signal folded.
    match signal.body:
        case ContractChecked() as body:
            key = check_key(signal, f"{body.boundary}:{body.contract}", body.item)
            return replace(state, checks=state.checks.set(key, body.passed))
        case PhaseStarted() as body:
            if body.item is not None:
                return _set_item(state, name, body.item, status="running", worker=body.worker)
            return _set_phase(
                state, name, replace(state.phase(name), status="running", worker=body.worker)
            )
        case PhaseScheduled() as body:
            return _phase_scheduled(state, signal, body)
        case PhaseCompleted() as body:
            return _phase_completed(state, signal, body)
        case InvariantChecked() as body:
            key = check_key(signal, body.invariant, body.item)
            return replace(state, checks=state.checks.set(key, body.passed))
        case RunRequested() as body:
            return _run_requested(state, signal, body)
        case RunStarted() as body:
            return _run_started(state, signal, body)
        case PhaseFailed() as body:
            return _phase_ended_badly(
                state, signal, "failed", body.error, body.quarantined_artifact, body.item
            )
        case PhaseTimedOut() as body:
            error = ErrorInfo(kind="Timeout", message=f"exceeded {body.timeout}s", retryable=True)
            return _phase_ended_badly(state, signal, "timed_out", error, "", body.item)
        case PhaseRetryScheduled() as body:
            if body.item is not None:
                return _set_item(state, name, body.item, status="retrying")
            return _set_phase(state, name, replace(state.phase(name), status="retrying"))
        case PhaseSkipped() as body:
            return _phase_skipped(state, signal, body)
        case RunCompleted() as body:
            return replace(
                state, status="completed", fingerprint=body.fingerprint, ended_at=signal.at
            )
        case RunFailed() as body:
            return _run_failed(state, signal, body)
        case RunCancelled():
            return _run_cancelled(state, signal)
        case (
            CircuitOpened()
            | CircuitClosed()
            | TriggerEvaluated()
            | ScheduleTicked()
            | RunQueued()
            | RunReleased()
            | RunWithdrawn()
            | BackfillRequested()
            | PartitionLaunched()
            | PartitionSkipped()
            | BackfillFinished()
        ):
            return state  # a pipeline's circuits and the triggers' records: no run's state
        case _:
            return state  # pragma: no cover - every kind is handled above


def _run_requested(state: RunState, signal: Signal, body: RunRequested) -> RunState:
    return replace(
        state,
        status="requested",
        seed=body.seed or 0,
        input_digest=body.input_digest,
        config=dict(body.config),
        resume_of=body.resume_of,
        batch_id=body.batch_id,
        tags=dict(body.tags),
        requested_at=signal.at,
    )


def _run_started(state: RunState, signal: Signal, body: RunStarted) -> RunState:
    """Running, with every phase of the plan pending."""
    phases = {p.name: PhaseState() for p in body.plan.phases} if body.plan else {}
    return replace(
        state,
        status="running",
        seed=body.seed,
        plan=_shared(body.plan),
        config=dict(body.config),
        phases=phases,
        started_at=signal.at,
    )


def attempt_status(state: RunState, signal: Signal, body: PhaseScheduled) -> PhaseStatus | None:
    """The status in ``state`` of the attempt ``signal`` schedules (of its phase, or of
    its fan-out item); None when ``state`` holds no attempt there or another one."""
    phase = state.phase(signal.phase)
    current = phase if body.item is None else phase.item_states.get(body.item)
    if current is None or current.attempt != signal.attempt:
        return None
    return current.status


def _phase_scheduled(state: RunState, signal: Signal, body: PhaseScheduled) -> RunState:
    """A whole phase scheduled starts an attempt afresh (no error, the inputs it was
    scheduled with); an item scheduled is that item's attempt, and its phase runs."""
    name = signal.phase
    phase = state.phase(name)
    first_at = phase.scheduled_at or signal.at
    if body.item is None:
        return _set_phase(
            state,
            name,
            replace(
                phase,
                status="scheduled",
                attempt=signal.attempt,
                items=body.items,
                error=None,
                inputs=dict(body.inputs),
                scheduled_at=first_at,
            ),
        )
    state = _set_item(state, name, body.item, status="scheduled", attempt=signal.attempt)
    # An item's retry is scheduled without `items`: the fan-out's size stays.
    items = body.items if body.items is not None else phase.items
    return _set_phase(
        state,
        name,
        replace(state.phase(name), status="running", items=items, scheduled_at=first_at),
    )


def _phase_completed(state: RunState, signal: Signal, body: PhaseCompleted) -> RunState:
    """An item completed keeps its output; a phase completed ends with its output (a
    fan-out's duration is its items' when the signal carries none)."""
    name = signal.phase
    if body.item is not None:
        return _set_item(
            state,
            name,
            body.item,
            status="completed",
            output_digest=body.output_digest,
            artifact=body.artifact,
            duration=body.duration,
        )
    phase = state.phase(name)
    fanned = sum((i.duration for i in phase.item_states.values()), 0.0)  # a float, even of none
    return _set_phase(
        state,
        name,
        replace(
            phase,
            status="completed",
            output_digest=body.output_digest,
            artifact=body.artifact,
            item_count=body.item_count,
            duration=body.duration or fanned,
            error=None,
            ended_at=signal.at,
        ),
    )


def _phase_ended_badly(
    state: RunState,
    signal: Signal,
    status: PhaseStatus,
    error: ErrorInfo,
    quarantined: str,
    item: int | None,
) -> RunState:
    """An attempt failed or timed out (``status``): the phase, or the item and its
    phase, carry ``error``; a quarantined output is kept unless there is none."""
    name = signal.phase
    if item is not None:
        kept = {"quarantined": quarantined} if quarantined else {}
        state = _set_item(state, name, item, status=status, error=error, **kept)
        return _set_phase(state, name, replace(state.phase(name), error=error))
    phase = state.phase(name)
    return _set_phase(
        state,
        name,
        replace(
            phase,
            status=status,
            error=error,
            ended_at=signal.at,
            quarantined=quarantined or phase.quarantined,
        ),
    )


def _phase_skipped(state: RunState, signal: Signal, body: PhaseSkipped) -> RunState:
    """Skipped, with the output (and items) it reuses when resumed."""
    name = signal.phase
    phase = state.phase(name)
    return _set_phase(
        state,
        name,
        replace(
            phase,
            status="skipped",
            skip_reason=body.reason,
            ended_at=signal.at,
            output_digest=body.reused_digest,
            artifact=body.reused_artifact,
            item_count=len(body.reused_items)
            if body.reused_items
            else (
                body.reused_item_count if body.reused_item_count is not None else phase.item_count
            ),
            item_states=ItemTable(
                (i, ItemState(status="completed", artifact=a))
                for i, a in enumerate(body.reused_items)
            )
            if body.reused_items
            else phase.item_states,
        ),
    )


def _run_cancelled(state: RunState, signal: Signal) -> RunState:
    """The run ends; every phase and item not yet settled is ``cancelled`` (a worker
    stops its attempt: :mod:`sisas.services.worker`), so no view shows it running."""
    return replace(_settled(state, signal, _UNSETTLED), status="cancelled", ended_at=signal.at)


_IN_FLIGHT: frozenset[str] = frozenset({"scheduled", "running", "retrying"})


def _settled(state: RunState, signal: Signal, unsettled: frozenset[str]) -> RunState:
    """``state`` with every phase and item whose status is in ``unsettled`` marked
    ``cancelled``: the run ended, so none of them runs any more or counts. A cancelled
    run settles its pending phases too; a failed one only those in flight (the pending
    ones never ran, and read so)."""
    phases = dict(state.phases)
    for name, ps in state.phases.items():
        items = ps.item_states
        if items.count(*unsettled):  # the counts spare a scan of fan-outs that ended
            for i, it in ps.item_states.items():
                if it.status in unsettled:
                    items = items.set(i, replace(it, status="cancelled"))
        if ps.status in unsettled or items is not ps.item_states:
            status = "cancelled" if ps.status in unsettled else ps.status
            phases[name] = replace(
                ps,
                status=status,
                item_states=items,
                ended_at=signal.at if ps.status in unsettled else ps.ended_at,
            )
    return replace(state, phases=phases)


def _run_failed(state: RunState, signal: Signal, body: RunFailed) -> RunState:
    return replace(
        _settled(state, signal, _IN_FLIGHT),
        status="failed",
        error=body.error,
        failed_phase=body.failed_phase,
        ended_at=signal.at,
    )


def fold(signals: Iterable[Signal], *, pipeline: str = "", run_id: str = "") -> RunState:
    """The state after all ``signals`` (one run, in order)."""
    state: RunState | None = None
    for signal in signals:
        if state is None:
            state = RunState.new(signal.pipeline, signal.run_id)
        state = evolve(state, signal)
    return state if state is not None else RunState.new(pipeline, run_id)


_ADDED_LATER: Final[dict[str, object]] = {"tags": {}}
"""Fields ``RunState`` gained after its digests were first pinned, with their defaults:
left out of the digest while at their default (as a signal omits its defaults), so a
run that does not use them keeps the digest it always had."""


def state_digest(state: RunState) -> str:
    """sha256 (hex) of the canonical JSON of ``state`` (keys sorted, item numbers as
    text): equal states give equal digests, however their dicts were filled."""
    data = msgspec.to_builtins(state, str_keys=True, enc_hook=enc_hook)
    for key, default in _ADDED_LATER.items():
        if data.get(key) == default:
            del data[key]
    return hashlib.sha256(_STATE_JSON.encode(data)).hexdigest()
