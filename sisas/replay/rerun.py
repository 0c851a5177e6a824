"""Rerun: which attempts of a run to execute again, and how to judge what they give.

Each phase (each item of a fan-out) is executed again from the inputs, seed, attempt
and configuration its recorded attempt had, not from the rerun's own upstream outputs:
a difference then points at the phase that differs, not at everything downstream of it.
The attempt rerun is the one that decided the phase: its completion, or its last
failure. A phase whose plan says ``side_effects`` (it posts, sends, writes somewhere) is
never executed again unless asked: its recorded result stands in the fingerprint, and
its recorded output is what the phases after it were scheduled with anyway. Pure:
signals and outcomes in, verdicts out; execution is the caller's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Literal

import msgspec

from sisas.errors import UsageError
from sisas.handlers.derive import run_fingerprint
from sisas.handlers.execute import Outcome
from sisas.handlers.state import RunState, evolve
from sisas.replay.fielddiff import field_diff, output_value
from sisas.replay.verdicts import ArtifactProblem, CheckDiff, FieldDiff, PhaseRerun, RerunVerdict
from sisas.signals.digest import semantic_digest
from sisas.signals.envelope import Signal
from sisas.signals.kinds import (
    ContractChecked,
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    PhaseScheduled,
    PhaseStarted,
    PhaseTimedOut,
    RunStarted,
    Scalar,
)
from sisas.signals.plan import Environment

__all__ = [
    "SIDE_EFFECTS_HELD",
    "RerunPlan",
    "Task",
    "hold_side_effects",
    "judge",
    "plan_rerun",
    "verdict",
]

SIDE_EFFECTS_HELD = "side effects (recorded output reused; --include-side-effects runs it)"
"""Why a phase with side effects was not executed again (``not_rerun``)."""


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded attempt to execute again, and what it recorded."""

    phase: str
    item: int | None = None
    attempt: int = 0
    seed: int = 0
    inputs: dict[str, str] = {}
    gathered: dict[str, list[str]] = {}
    status: Literal["completed", "failed"] = "completed"
    output_digest: str = ""
    artifact: str = ""
    error_kind: str = ""
    checks: dict[str, bool] = {}
    environment: str = ""
    """The artifact digest of the environment the attempt ran in (its phase_started)."""

    @property
    def artifacts(self) -> list[str]:
        """Every artifact the rerun reads: its inputs and the recorded output."""
        found = list(self.inputs.values()) + [a for v in self.gathered.values() for a in v if a]
        return found + ([self.artifact] if self.artifact else [])


class RerunPlan(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    pipeline: str
    state: RunState
    config: dict[str, Scalar]
    code_fingerprint: str
    tasks: list[Task]
    not_rerun: dict[str, str]
    environment: Environment | None = None
    """The environment recorded with the run's plan (None for runs recorded before it)."""
    side_effects: list[str] = []
    """Phases with side effects: the recorded plan's, and any the caller adds."""
    reused: list[Task] = []
    """Attempts not executed again whose recorded result stands in the fingerprint (side
    effects)."""
    blocked: list[Task] = []
    """Attempts that could not be executed again: an input could not be read."""


_Key = tuple[str, int | None, int]


def plan_rerun(signals: Sequence[Signal], *, include_side_effects: bool = False) -> RerunPlan:
    """The attempts of the run made of ``signals`` (one run, in order) to execute again.

    The attempts of phases whose recorded plan says ``side_effects`` are held back
    (:func:`hold_side_effects`) unless ``include_side_effects``."""
    if not signals:
        raise UsageError("there are no signals to rerun: is this the right run or bundle?")
    state = RunState.new(signals[0].pipeline, signals[0].run_id)
    scheduled: dict[_Key, PhaseScheduled] = {}
    started_in: dict[_Key, str] = {}
    checks: dict[_Key, dict[str, bool]] = {}
    decided: dict[tuple[str, int | None], Task] = {}
    code = ""
    environment: Environment | None = None
    side_effects: list[str] = []
    for s in signals:
        state = evolve(state, s)
        body = s.body
        item = getattr(body, "item", None)
        key: _Key = (s.phase, item, s.attempt)
        if isinstance(body, PhaseScheduled):
            scheduled[key] = body
            checks[key] = {}
        elif isinstance(body, PhaseStarted):
            started_in[key] = body.environment
        elif isinstance(body, ContractChecked):
            checks.setdefault(key, {})[f"{body.boundary}:{body.contract}"] = body.passed
        elif isinstance(body, InvariantChecked):
            checks.setdefault(key, {})[body.invariant] = body.passed
        elif isinstance(body, PhaseCompleted | PhaseFailed) and key in scheduled:
            sched = scheduled[key]
            decided[(s.phase, item)] = Task(
                phase=s.phase,
                item=item,
                attempt=s.attempt,
                seed=sched.seed,
                inputs=dict(sched.inputs),
                gathered={k: list(v) for k, v in sched.gathered.items()},
                status="completed" if isinstance(body, PhaseCompleted) else "failed",
                output_digest=(
                    body.output_digest if isinstance(body, PhaseCompleted) else body.quarantined
                ),
                artifact=(
                    body.artifact if isinstance(body, PhaseCompleted) else body.quarantined_artifact
                ),
                error_kind=body.error.kind if isinstance(body, PhaseFailed) else "",
                checks=checks.get(key, {}),
                environment=started_in.get(key, ""),
            )
        elif isinstance(body, PhaseTimedOut):
            decided.pop((s.phase, item), None)
        elif isinstance(body, RunStarted):
            code = body.fingerprint
            environment = body.plan.environment if body.plan else None
            side_effects = [p.name for p in body.plan.phases if p.side_effects] if body.plan else []
    not_rerun: dict[str, str] = {}
    for name, ps in state.phases.items():
        if ps.status == "skipped":
            not_rerun[name] = f"skipped ({ps.skip_reason})"
        elif not any(t.phase == name for t in decided.values()):
            why = "timed out" if ps.status == "timed_out" else f"never finished ({ps.status})"
            not_rerun[name] = why
    order = {name: i for i, name in enumerate(state.phases)}
    tasks = sorted(decided.values(), key=lambda t: (order.get(t.phase, 1 << 30), t.item or 0))
    plan = RerunPlan(
        run_id=state.run_id,
        pipeline=state.pipeline,
        state=state,
        config=dict(state.config),
        code_fingerprint=code,
        tasks=tasks,
        not_rerun=not_rerun,
        environment=environment,
        side_effects=side_effects,
    )
    return plan if include_side_effects else hold_side_effects(plan)


def hold_side_effects(plan: RerunPlan, phases: Collection[str] = ()) -> RerunPlan:
    """``plan`` with the attempts of its side-effect phases (and of ``phases``: those the
    code loaded now declares, for a run whose plan predates or differs from it) moved
    from ``tasks`` to ``reused``, each phase listed in ``not_rerun`` as
    :data:`SIDE_EFFECTS_HELD`."""
    held = set(plan.side_effects) | set(phases)
    reused = [t for t in plan.tasks if t.phase in held]
    if not reused and held <= set(plan.side_effects):
        return plan
    not_rerun = dict(plan.not_rerun)
    for t in reused:
        not_rerun[t.phase] = SIDE_EFFECTS_HELD
    return msgspec.structs.replace(
        plan,
        tasks=[t for t in plan.tasks if t.phase not in held],
        reused=plan.reused + reused,
        not_rerun=not_rerun,
        side_effects=sorted(held),
    )


def judge(
    task: Task, outcome: Outcome, recorded_output: bytes | None, *, seconds: float = 0.0
) -> PhaseRerun:
    """Compare one re-executed attempt with what its recorded attempt gave."""
    new_checks = {f"{c.boundary}:{c.contract}": c.passed for c in outcome.contracts}
    new_checks.update({i.invariant: i.passed for i in outcome.invariants})
    check_diffs = [
        CheckDiff(check=name, recorded=task.checks.get(name), new=new_checks.get(name))
        for name in list(task.checks) + [n for n in new_checks if n not in task.checks]
        if task.checks.get(name) != new_checks.get(name)
    ]
    diff: list[FieldDiff] = []
    # A failed attempt's output is its quarantined output: compared like any other.
    if outcome.status == task.status and outcome.output_digest != task.output_digest:
        recorded, new = output_value(recorded_output), output_value(outcome.output)
        diff = field_diff(recorded, new, path="output")
    error_kind = outcome.error.kind if outcome.error else ""
    equal = (
        outcome.status == task.status
        and outcome.output_digest == task.output_digest
        and error_kind == task.error_kind
        and not check_diffs
    )
    return PhaseRerun(
        phase=task.phase,
        item=task.item,
        attempt=task.attempt,
        equal=equal,
        recorded_status=task.status,
        new_status=outcome.status,
        recorded_digest=task.output_digest,
        new_digest=outcome.output_digest,
        checks=check_diffs,
        diff=diff,
        error="" if equal or outcome.error is None else outcome.error.message,
        seconds=seconds,
    )


def _fingerprint(
    plan: RerunPlan,
    digests: Mapping[tuple[str, int | None], str],
    results: Sequence[PhaseRerun] = (),
) -> str:
    """The run fingerprint as the orchestrator computes it, from per-attempt digests and
    the recorded checks changed by ``results``' check differences."""
    checks = dict(plan.state.checks)
    for r in results:
        for c in r.checks:
            key = f"{r.phase}{'' if r.item is None else f'[{r.item}]'}:{c.check}"
            if c.new is None:
                checks.pop(key, None)
            else:
                checks[key] = c.new
    outputs: dict[str, str] = {}
    for name, ps in plan.state.phases.items():
        if ps.status == "skipped" and ps.skip_reason == "resumed":
            outputs[name] = ps.output_digest
        elif ps.items is not None and ps.status == "completed":
            items = [digests.get((name, i), "") for i in range(ps.items)]
            outputs[name] = semantic_digest(items)
        elif ps.status == "completed":
            outputs[name] = digests.get((name, None), "")
    return run_fingerprint(outputs, checks)


def _digests(tasks: Iterable[Task]) -> dict[tuple[str, int | None], str]:
    # A failed attempt's digest is its quarantined output's: it is no output of the run.
    return {(t.phase, t.item): t.output_digest if t.status == "completed" else "" for t in tasks}


def _environment_changes(
    registered: Environment | None,
    ran_in: Mapping[str, Environment],
    current: Environment | None,
) -> list[str]:
    """Each difference between the environments the attempts ran in (else the one
    registered with the plan) and ``current``; one line each, sorted, once."""
    if current is None:
        return []
    recorded = list(ran_in.values()) or ([registered] if registered is not None else [])
    if len(recorded) == 1:
        return recorded[0].changes(current)
    return sorted({line for env in recorded for line in env.changes(current)})


def verdict(
    plan: RerunPlan,
    results: Sequence[PhaseRerun],
    *,
    workers: int,
    artifact_problems: Sequence[ArtifactProblem] = (),
    artifacts_read: int = 0,
    current_code: str = "",
    current_environment: Environment | None = None,
    attempt_environments: Mapping[str, Environment] | None = None,
    compute_seconds: float = 0.0,
) -> RerunVerdict:
    """The rerun's verdict: deterministic when every re-executed attempt matched, no
    attempt was blocked by an unreadable input and the fingerprints are equal; the
    evidence complete when ``artifact_problems`` is empty. Held attempts (side effects)
    count with their recorded digests. The environment it ran in is compared with the
    recorded one: each difference is named (``numpy 2.3.1 -> 2.4.0``), whatever the
    verdict, so a divergence is explained and an equal rerun under other versions says
    so. ``attempt_environments``: the environment records the attempts name (by
    digest), when they could be read: each attempt is then compared with the
    environment it actually ran in, not the one registered with the plan."""
    recorded = _digests([*plan.tasks, *plan.reused, *plan.blocked])
    new = _digests(plan.reused)
    new.update(
        {(r.phase, r.item): r.new_digest if r.new_status == "completed" else "" for r in results}
    )
    first = next((r for r in results if not r.equal), None)
    recorded_fingerprint = plan.state.fingerprint or _fingerprint(plan, recorded)
    fingerprint = _fingerprint(plan, new, results)
    executed = {t.phase for t in plan.tasks}
    named = {t.environment for t in [*plan.tasks, *plan.reused, *plan.blocked] if t.environment}
    ran_in = {d: e for d, e in (attempt_environments or {}).items() if d in named}
    return RerunVerdict(
        run_id=plan.run_id,
        pipeline=plan.pipeline,
        deterministic=first is None and not plan.blocked and fingerprint == recorded_fingerprint,
        workers=workers,
        recorded_fingerprint=recorded_fingerprint,
        fingerprint=fingerprint,
        phases=list(results),
        first_divergence=first,
        not_rerun=plan.not_rerun,
        evidence_complete=not artifact_problems,
        artifacts_read=artifacts_read,
        artifact_problems=list(artifact_problems),
        side_effects_rerun=[p for p in plan.side_effects if p in executed],
        recorded_code=plan.code_fingerprint,
        current_code=current_code,
        recorded_environment=plan.environment,
        current_environment=current_environment,
        attempt_environments=ran_in,
        environment_changes=_environment_changes(plan.environment, ran_in, current_environment),
        compute_seconds=compute_seconds,
    )
