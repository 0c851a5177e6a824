"""The orchestrator's decision: ``decide(state, input, plans) -> signals``.

Pure: the signals' times come from the input, their ids from the run's chain, seeds and
backoff from the run's seed. Deciding the same input on the same state always gives the
same signals, byte for byte: that is what makes a retried or duplicated decision
harmless (the log deduplicates by id) and a replay exact.

Rules, in order of the input:
- ``start_run``: run_requested, then run_started with the plan (or run_failed for an
  unknown pipeline), skips for disabled and resumed phases, and the first schedules.
- ``phase_report``: stale or duplicate reports (wrong attempt, phase already done, run
  ended) change nothing. ``started`` records phase_started. ``completed`` and
  ``failed`` record every contract and invariant check, then phase_completed or
  phase_failed; a failure is retried (retry_scheduled + scheduled with a backoff delay)
  while attempts remain and the error is retryable, else it fails the run when the phase
  is fatal, or lets it go on without that output.
- ``cancel_run``: run_cancelled, unless the run already ended.
After each input the run advances: phases whose dependencies are satisfied are
scheduled, phases behind a failed or skipped dependency are skipped, and when every
phase has ended the run completes with its determinism fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from sisas.handlers.circuit import Circuit, after_failure, after_success, hold_back
from sisas.handlers.derive import backoff_delay, derive_seed, run_fingerprint
from sisas.handlers.state import PhaseState, PhaseStatus, RunState, evolve
from sisas.signals.chain import Draft, seal
from sisas.signals.digest import semantic_digest
from sisas.signals.envelope import Signal
from sisas.signals.inputs import CancelRun, Input, PhaseReport, StartRun
from sisas.signals.kinds import (
    Body,
    CircuitClosed,
    CircuitOpened,
    ContractChecked,
    ErrorInfo,
    InvariantChecked,
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
    RunRequested,
    RunStarted,
)
from sisas.signals.plan import PhasePlan, PipelinePlan

__all__ = [
    "Decision",
    "decide",
    "decide_full",
    "gathered_digest",
    "phase_enabled",
    "rejection",
    "satisfied",
    "scheduled_inputs",
]

DONE = frozenset({"completed", "failed", "timed_out", "skipped"})


class _Builder:
    """Seals each decided signal after the current head and folds it in at once."""

    def __init__(self, state: RunState, inp: Input, circuits: Mapping[str, Circuit]) -> None:
        self.state = state
        self.signals: list[Signal] = []
        self.circuits = dict(circuits)
        self.changed: dict[str, Circuit] = {}
        self.at = inp.at
        self._cause = inp.id

    def emit(self, body: Body, phase: str = "", attempt: int = 0) -> None:
        draft = Draft(body=body, at=self.at, phase=phase, attempt=attempt, causation=self._cause)
        signal = seal(self.state.head, draft)
        self.signals.append(signal)
        self.state = evolve(self.state, signal)


def phase_enabled(plan: PhasePlan, config: Mapping[str, object]) -> bool:
    """Whether a phase runs: ``--set NAME.enabled=...`` wins; side effects are opt-in."""
    override = config.get(f"{plan.name}.enabled")
    if isinstance(override, bool):
        return override
    return plan.enabled and not plan.side_effects


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The signals of a decision, the circuits (by phase) it changed, and the run's
    state with the signals folded in (what ``evolve`` makes of them: the builder folds
    each as it seals it, so a caller need not fold them again)."""

    signals: list[Signal]
    circuits: dict[str, Circuit]
    state: RunState


def decide(
    state: RunState,
    inp: Input,
    plans: Mapping[str, PipelinePlan],
    circuits: Mapping[str, Circuit] | None = None,
) -> list[Signal]:
    """The signals that ``inp`` causes in the run whose state is ``state`` (maybe none)."""
    return decide_full(state, inp, plans, circuits).signals


def decide_full(
    state: RunState,
    inp: Input,
    plans: Mapping[str, PipelinePlan],
    circuits: Mapping[str, Circuit] | None = None,
) -> Decision:
    """:func:`decide`, also returning the circuits of this pipeline's phases it changed.

    ``circuits`` holds the current circuit of each phase of the run's pipeline (closed
    when missing): shared by all runs, kept by the shell.
    """
    b = _Builder(state, inp, circuits or {})
    if isinstance(inp, StartRun):
        _start(b, inp, plans.get(inp.pipeline))
    elif isinstance(inp, CancelRun):
        if b.state.status in ("requested", "running"):
            b.emit(RunCancelled(reason=inp.reason, requested_by=inp.requested_by))
    elif isinstance(inp, PhaseReport):
        _report(b, inp)
        if inp.status == "started":
            # Every decision ends with the run advanced as far as it goes, and a start
            # ends nothing nor makes anything ready: there is nothing to advance.
            return Decision(signals=b.signals, circuits=b.changed, state=b.state)
    if b.state.status == "running":
        _advance(b)
    return Decision(signals=b.signals, circuits=b.changed, state=b.state)


def rejection(state: RunState, inp: Input) -> str | None:
    """Why ``inp``, which changed nothing, can never be valid for the run whose latest
    state is ``state``; None when it is merely stale or a duplicate (a late or repeated
    report, a second start, a cancel after the end), which is normal and not an error.

    Only true of the latest state: against an older one a report may be ahead of it.
    """
    kind = str(type(inp).__struct_config__.tag)
    if state.head.seq == 0:
        if isinstance(inp, StartRun):
            return None
        return f"no run {inp.run_id} in the log: a {kind} for a run that was never started"
    if not isinstance(inp, PhaseReport):
        return None
    if state.status == "new":  # signals, but no run_requested: no orchestrator began it
        return (
            f"run {inp.run_id} was never started (its log has no run_requested): a report "
            "on work no orchestrator decided; check the run with `sisas replay verify`"
        )
    if inp.phase not in state.phases:
        return f"run {inp.run_id} has no phase {inp.phase!r}: a report for a phase never scheduled"
    phase = state.phase(inp.phase)
    if inp.item is not None and inp.item not in phase.item_states:
        return f"phase {inp.phase} of run {inp.run_id} has no item {inp.item}"
    current = phase.attempt if inp.item is None else phase.item_states[inp.item].attempt
    if inp.attempt > current:
        return (
            f"attempt {inp.attempt} of phase {inp.phase} was never scheduled "
            f"(run {inp.run_id} is at attempt {current})"
        )
    return None


def _circuit_outcome(b: _Builder, phase: str, ok: bool, reason: str = "") -> None:
    plan = b.state.plan
    assert plan is not None
    current = b.circuits.get(phase, Circuit())
    if ok:
        new, closed = after_success(current)
        if closed:
            b.emit(
                CircuitClosed(scope=f"{plan.name}.{phase}", reason="a probe attempt succeeded"),
                phase,
            )
    else:
        new, opened = after_failure(current, b.at, plan.circuit_threshold)
        if opened:
            b.emit(
                CircuitOpened(
                    scope=f"{plan.name}.{phase}",
                    failures=new.failures,
                    reason=f"{new.failures} consecutive failures; last: {reason}",
                ),
                phase,
            )
    if new != current:
        b.circuits[phase] = new
        b.changed[phase] = new


def _start(b: _Builder, inp: StartRun, plan: PipelinePlan | None) -> None:
    if b.state.status != "new":
        return  # the run exists: a repeated command starts nothing
    b.emit(
        RunRequested(
            pipeline_version=plan.version if plan else "",
            input_digest=inp.input_digest,
            seed=inp.seed,
            config=dict(inp.config),
            requested_by=inp.requested_by,
            idempotency_key=inp.idempotency_key,
            resume_of=inp.resume_of,
            resume_from_phase=inp.resume_from_phase,
            batch_id=inp.batch_id,
            tags=dict(inp.tags),
        )
    )
    if inp.cancelled:  # cancelled while it waited for a slot: it never starts
        b.emit(RunCancelled(reason=inp.cancelled, requested_by=inp.cancelled_by))
        return
    if plan is None:
        b.emit(
            RunFailed(
                error=ErrorInfo(
                    kind="HardFailure",
                    message=f"pipeline {inp.pipeline!r} is not registered by any worker: "
                    "start a worker with it (`sisas worker --pipelines MODULE`) and run again",
                )
            )
        )
        return
    b.emit(
        RunStarted(
            pipeline_version=plan.version,
            fingerprint=plan.fingerprint,
            seed=inp.seed,
            input_digest=inp.input_digest,
            config=dict(inp.config),
            phases=[p.name for p in plan.phases],
            resume_of=inp.resume_of,
            batch_id=inp.batch_id,
            # the input's JSON Schema is for launching (the dashboard), not for the record
            plan=msgspec.structs.replace(plan, input_schema="") if plan.input_schema else plan,
        )
    )
    for p in plan.phases:
        if not phase_enabled(p, inp.config):
            why = "side effects are off unless enabled" if p.side_effects else "disabled"
            b.emit(PhaseSkipped(reason="disabled", detail=why), phase=p.name)
        elif p.name in inp.reuse:
            reused = inp.reuse[p.name]
            b.emit(
                PhaseSkipped(
                    reason="resumed",
                    detail=f"output reused from {inp.resume_of}",
                    reused_digest=reused.output_digest,
                    reused_artifact=reused.artifact,
                    reused_items=list(reused.items),
                    reused_item_count=reused.item_count,
                ),
                phase=p.name,
            )


def _report(b: _Builder, r: PhaseReport) -> None:
    """Decide a worker's report on an attempt of a phase or of one fan-out item.

    A stale, duplicate or out-of-order report changes nothing. A start is recorded; an
    outcome records the attempt's checks, then its completion, or its failure or timeout
    and what follows: a retry, the end of the run, or the phase going on without it.
    """
    current = _reported_attempt(b.state, r)
    if current is None:
        return  # stale, duplicate or out of order: changes nothing
    status, worker = current
    if r.status == "started":
        _attempt_started(b, r, status, worker)
        return
    if status == "scheduled":
        # The outcome overtook its "started" report (two orchestrators took them in the
        # other order): record the start first, so every attempt that ended has started.
        started = PhaseStarted(
            worker=r.worker, item=r.item, environment=r.environment, secrets=dict(r.secrets)
        )
        b.emit(started, r.phase, r.attempt)
    _record_checks(b, r)
    if r.status == "completed":
        _attempt_completed(b, r)
        return
    plan = _phase_plan(b.state, r.phase)
    if r.status == "timed_out":
        _after_failure(b, r, plan, _attempt_timed_out(b, r, plan))
    else:
        _after_failure(b, r, plan, _attempt_failed(b, r))


def _reported_attempt(state: RunState, r: PhaseReport) -> tuple[PhaseStatus, str] | None:
    """The status and worker of the attempt ``r`` reports on (the phase's, or its
    item's), when the run is going and that attempt is the current one and not ended;
    None otherwise."""
    if state.status != "running" or state.plan is None or r.phase not in state.phases:
        return None
    phase = state.phase(r.phase)
    if r.item is None:
        current_status, current_attempt, worker = phase.status, phase.attempt, phase.worker
    else:
        item = phase.item_states.get(r.item)
        if item is None:
            return None
        current_status, current_attempt, worker = item.status, item.attempt, item.worker
    if r.attempt != current_attempt or current_status not in ("scheduled", "running"):
        return None
    return current_status, worker


def _phase_plan(state: RunState, name: str) -> PhasePlan:
    assert state.plan is not None
    return state.plan.phase(name)


def _attempt_started(b: _Builder, r: PhaseReport, status: PhaseStatus, worker: str) -> None:
    """Record a start once per worker: a repeated start changes nothing, another
    worker's start (it took the work over from a lost one) is recorded."""
    if status == "scheduled" or worker != r.worker:
        started = PhaseStarted(
            worker=r.worker, item=r.item, environment=r.environment, secrets=dict(r.secrets)
        )
        b.emit(started, r.phase, r.attempt)


def _record_checks(b: _Builder, r: PhaseReport) -> None:
    """Every contract and invariant check of the attempt, in the order it made them."""
    for c in r.contracts:
        b.emit(
            ContractChecked(
                contract=c.contract,
                boundary=c.boundary,
                passed=c.passed,
                violations=list(c.violations),
                item=r.item,
            ),
            r.phase,
            r.attempt,
        )
    for i in r.invariants:
        b.emit(
            InvariantChecked(
                invariant=i.invariant,
                passed=i.passed,
                description=i.description,
                observed=i.observed,
                expected=i.expected,
                item=r.item,
            ),
            r.phase,
            r.attempt,
        )


def _attempt_completed(b: _Builder, r: PhaseReport) -> None:
    """A success for the phase's circuit, then the phase (or item) completed."""
    _circuit_outcome(b, r.phase, True)
    b.emit(
        PhaseCompleted(
            output_digest=r.output_digest,
            artifact=r.artifact,
            duration=r.duration,
            resources=r.resources,
            item=r.item,
            worker=r.worker,
            item_count=r.item_count,
            log=r.log,
            log_lines=r.log_lines,
            log_dropped=r.log_dropped,
        ),
        r.phase,
        r.attempt,
    )


def _attempt_timed_out(b: _Builder, r: PhaseReport, plan: PhasePlan) -> ErrorInfo:
    """Record the timeout; its error (retryable)."""
    timed_out = PhaseTimedOut(
        timeout=plan.timeout or 0.0,
        item=r.item,
        log=r.log,
        log_lines=r.log_lines,
        log_dropped=r.log_dropped,
    )
    b.emit(timed_out, r.phase, r.attempt)
    return ErrorInfo(
        kind="Timeout", message=f"phase exceeded its timeout of {plan.timeout}s", retryable=True
    )


def _attempt_failed(b: _Builder, r: PhaseReport) -> ErrorInfo:
    """Record the failure with the output it quarantined, if any; its error."""
    error = r.error or ErrorInfo(kind="HardFailure", message="failed without a reason")
    b.emit(
        PhaseFailed(
            error=error,
            duration=r.duration,
            item=r.item,
            worker=r.worker,
            quarantined=r.output_digest if r.artifact else "",
            quarantined_artifact=r.artifact if r.output_digest else "",
            log=r.log,
            log_lines=r.log_lines,
            log_dropped=r.log_dropped,
        ),
        r.phase,
        r.attempt,
    )
    return error


def _after_failure(b: _Builder, r: PhaseReport, plan: PhasePlan, error: ErrorInfo) -> None:
    """A failure for the phase's circuit, then a retry while attempts remain and the
    error is retryable, else the attempt failed for good."""
    _circuit_outcome(b, r.phase, False, error.message)
    if error.retryable and r.attempt < plan.retries:
        _retry(b, r, plan, error)
    else:
        _failed_for_good(b, r, plan, error)


def _retry(b: _Builder, r: PhaseReport, plan: PhasePlan, error: ErrorInfo) -> None:
    """Schedule the next attempt of the phase (or item) after its seeded backoff."""
    nxt = r.attempt + 1
    delay = backoff_delay(
        b.state.seed,
        r.phase,
        nxt,
        base=plan.backoff,
        factor=plan.backoff_factor,
        cap=plan.backoff_max,
        item=r.item,
    )
    b.emit(
        PhaseRetryScheduled(next_attempt=nxt, delay=delay, reason=error.message, item=r.item),
        r.phase,
        r.attempt,
    )
    _schedule(b, plan, nxt, item=r.item, delay=delay)


def _failed_for_good(b: _Builder, r: PhaseReport, plan: PhasePlan, error: ErrorInfo) -> None:
    """An attempt that is not retried. An item of a partial fan-out is left out (the
    fan-out completes without it); a fatal phase or item fails the run (unless the
    error is NonFatal); a non-fatal item fails its whole phase, non-fatally; a whole
    phase that is not fatal stays failed and the run goes on without its output."""
    if plan.partial and r.item is not None:
        pass  # the item failed for good; the fan-out completes without it (_gather)
    elif plan.fatal and error.kind != "NonFatal":
        b.emit(RunFailed(error=error, failed_phase=r.phase))
    elif r.item is not None:
        # A non-fatal item failure fails the whole fanned-out phase, non-fatally.
        b.emit(PhaseFailed(error=error, worker=r.worker), r.phase, r.attempt)


def scheduled_inputs(
    state: RunState, plan: PhasePlan
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The artifacts a phase is scheduled with: its dependencies' outputs (or the run input)."""
    inputs: dict[str, str] = {}
    gathered: dict[str, list[str]] = {}
    if not plan.depends_on or any(c.startswith("entry:input:") for c in plan.contracts):
        inputs["input"] = state.input_digest  # the run input, to roots and to who asks for it
    assert state.plan is not None
    for dep in plan.depends_on:
        dep_state = state.phase(dep)
        if state.plan.phase(dep).map_over and satisfied(dep_state):
            n = dep_state.item_count or 0
            gathered[dep] = [dep_state.item_states[i].artifact for i in range(n)]
        else:
            inputs[dep] = dep_state.artifact
    return inputs, gathered


def _schedule(
    b: _Builder,
    plan: PhasePlan,
    attempt: int,
    *,
    item: int | None = None,
    items: int | None = None,
    delay: float = 0.0,
    known: tuple[dict[str, str], dict[str, list[str]]] | None = None,
) -> None:
    """Schedule an attempt of ``plan``'s phase (or of one item of it); ``known`` is its
    :func:`scheduled_inputs` when the caller schedules many items at once (each signal
    still gets its own copies)."""
    if known is None:
        inputs, gathered = scheduled_inputs(b.state, plan)
    else:
        inputs, gathered = dict(known[0]), {k: list(v) for k, v in known[1].items()}
    assert b.state.plan is not None
    held = hold_back(b.circuits.get(plan.name, Circuit()), b.at, b.state.plan.circuit_cooldown)
    delay = max(delay, held)
    b.emit(
        PhaseScheduled(
            inputs=inputs,
            gathered=gathered,
            item=item,
            items=items,
            seed=derive_seed(b.state.seed, plan.name, item),
            delay=delay,
            timeout=plan.timeout,
        ),
        plan.name,
        attempt,
    )


def satisfied(p: PhaseState) -> bool:
    """Whether a phase's output is available to its dependents (computed or reused)."""
    return p.status == "completed" or (p.status == "skipped" and p.skip_reason == "resumed")


def _advance(b: _Builder) -> None:
    """Schedule what is ready, skip what cannot run, gather fan-outs, end the run."""
    plan = b.state.plan
    assert plan is not None
    progressed = True
    while progressed and b.state.status == "running":
        progressed = False
        for p in plan.phases:
            ps = b.state.phase(p.name)
            if ps.status == "running" and ps.items is not None:
                progressed |= _gather(b, p, ps)
                continue
            if ps.status != "pending":
                continue
            deps = [b.state.phase(d) for d in p.depends_on]
            blocked = [
                d
                for d, s in zip(p.depends_on, deps, strict=True)
                if s.status in DONE and not satisfied(s)
            ]
            if blocked:
                switched_off = all(
                    b.state.phase(d).skip_reason in ("disabled", "upstream_disabled")
                    for d in blocked
                )
                reason: Literal["upstream_disabled", "upstream_failed"] = (
                    "upstream_disabled" if switched_off else "upstream_failed"
                )
                b.emit(PhaseSkipped(reason=reason, detail=f"needs {', '.join(blocked)}"), p.name)
                progressed = True
            elif all(satisfied(s) for s in deps):
                if p.map_over:
                    count = b.state.phase(p.map_over).item_count
                    if count is None:
                        _not_a_list(b, p)
                        progressed = True
                        continue
                    n = count
                    if n == 0:
                        b.emit(
                            PhaseCompleted(output_digest=semantic_digest([]), item_count=0), p.name
                        )
                    known = scheduled_inputs(b.state, p)  # the same for every item
                    for i in range(n):
                        _schedule(b, p, 0, item=i, items=n, known=known)
                else:
                    _schedule(b, p, 0)
                progressed = True
    if b.state.status == "running" and all(
        b.state.phase(p.name).status in DONE for p in plan.phases
    ):
        outputs = {n: s.output_digest for n, s in b.state.phases.items() if satisfied(s)}
        b.emit(RunCompleted(fingerprint=run_fingerprint(outputs, b.state.checks), outputs=outputs))


def _not_a_list(b: _Builder, plan: PhasePlan) -> None:
    error = ErrorInfo(
        kind="HardFailure",
        message=f"{plan.name} maps over {plan.map_over}, "
        f"whose output is not a list: return a list from {plan.map_over}",
    )
    b.emit(PhaseFailed(error=error), plan.name)
    if plan.fatal:
        b.emit(RunFailed(error=error, failed_phase=plan.name))


def gathered_digest(plan: PhasePlan, ps: PhaseState) -> str | None:
    """The digest a fan-out completes with once every item has ended (None: not yet).

    Every item must have completed; in a ``partial`` fan-out an item may also have
    failed or timed out for good, and counts as ``""`` (its place is null downstream).
    O(1) until the last item ends (the item table counts its statuses), then O(N) once.
    """
    ended = ("completed", "failed", "timed_out") if plan.partial else ("completed",)
    n = ps.items or 0
    if ps.item_states.count(*ended) < n:
        return None  # some item has not ended: known from the counts, without a scan
    items = [ps.item_states.get(i) for i in range(n)]
    if not all(it is not None and it.status in ended for it in items):
        return None  # items outside 0..n-1 made up the count (only a forged log has them)
    return semantic_digest(
        [it.output_digest if it and it.status == "completed" else "" for it in items]
    )


def _gather(b: _Builder, plan: PhasePlan, ps: PhaseState) -> bool:
    """When every item of a fan-out ended, complete the phase with their digests."""
    digest = gathered_digest(plan, ps)
    if digest is None:
        return False
    b.emit(PhaseCompleted(output_digest=digest, item_count=ps.items), plan.name)
    return True
