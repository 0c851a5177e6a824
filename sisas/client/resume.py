"""Preparing a resumed run: which recorded outputs to reuse, each verified first."""

from __future__ import annotations

from typing import Any

import pydantic

from sisas.bus.ports import Ports
from sisas.errors import SisasError, UsageError
from sisas.handlers import binary
from sisas.handlers.state import RunState, fold
from sisas.pipeline import Pipeline
from sisas.signals import CorruptMessage, Scalar, StoredSignal, semantic_digest, verify_chain
from sisas.signals.inputs import Reuse

__all__ = ["Resume", "first_unfinished", "prepare_resume"]


class Resume:
    """What a resumed run inherits from the old one."""

    def __init__(self, old: RunState, reuse: dict[str, Reuse], from_phase: str) -> None:
        self.old = old
        self.reuse = reuse
        self.from_phase = from_phase
        """The first phase the new run runs again."""

    @property
    def input_digest(self) -> str:
        return self.old.input_digest

    @property
    def seed(self) -> int:
        return self.old.seed

    @property
    def config(self) -> dict[str, Scalar]:
        return dict(self.old.config)


async def _verified(bus: Ports, artifact: str, digest: str, annotation: Any, what: str) -> None:
    try:
        data = await bus.artifacts.get(artifact)  # checks the bytes against their key
    except SisasError as exc:
        raise UsageError(f"cannot reuse {what}: {exc}; run it again without --resume") from None
    if annotation is None:
        return
    if binary.format_of(data) != "json":  # an array or a table: digested as stored
        try:
            found = binary.digest_of(data)
        except binary.Unstorable as exc:
            raise UsageError(f"cannot reuse {what}: {exc}") from None
    else:
        found = semantic_digest(pydantic.TypeAdapter(annotation).validate_json(data))
    if found != digest:
        raise UsageError(
            f"the recorded output of {what} does not verify: its content digests "
            f"to {found}, the log says {digest}; run without --resume"
        )


def first_unfinished(old: RunState) -> str:
    """Where a resume without ``--from`` starts ("re-execute from failure"): the first
    phase (in plan order) that neither has an output nor was switched off. Raises
    :class:`UsageError` for a run that completed, or has nothing left to run."""
    assert old.plan is not None
    if old.status == "completed":
        raise UsageError(
            f"run {old.run_id} completed: nothing to re-execute; pass --from PHASE to "
            "run from a phase again"
        )
    if old.failed_phase:  # re-execute from the failed phase (and what needs it), as Dagster does
        return old.failed_phase
    for p in old.plan.phases:
        ps = old.phase(p.name)
        if ps.status == "completed" or ps.output_digest or ps.skip_reason == "disabled":
            continue
        return p.name
    raise UsageError(
        f"run {old.run_id} has an output for every phase it ran: nothing to re-execute; "
        "pass --from PHASE to run from a phase again"
    )


async def prepare_resume(
    bus: Ports, pipeline: str, old_run: str, from_phase: str, local: Pipeline | None
) -> Resume:
    """Check the old run and verify every output that will be reused.

    ``from_phase`` empty: from the first phase without an output (a failed one, or one
    that never ran: see :func:`first_unfinished`).

    Raises :class:`UsageError` (nothing is started) when the old run is unknown, of
    another pipeline, not intact, lacks ``from_phase``, or an output does not verify.
    """
    records = await bus.log.read_run(old_run)
    if not records:
        raise UsageError(f"no run {old_run!r} to resume from: check the run id")
    signals = [r.signal for r in records if isinstance(r, StoredSignal)]
    issues = verify_chain(signals, run_id=old_run)
    if issues or any(isinstance(r, CorruptMessage) for r in records):
        raise UsageError(
            f"run {old_run}'s log is not intact ({len(issues)} chain issue(s)); "
            "a resumed run cannot build on it: run from the start"
        )
    old = fold(signals)
    if old.pipeline != pipeline or old.plan is None:
        raise UsageError(
            f"run {old_run} is a run of {old.pipeline!r}"
            + ("" if old.plan else " that never started")
            + f", not {pipeline!r}"
        )
    order = [p.name for p in old.plan.phases]
    if not from_phase:
        from_phase = first_unfinished(old)
    if from_phase not in order:
        raise UsageError(
            f"--from {from_phase!r} is not a phase of {pipeline} (phases: {', '.join(order)})"
        )
    reuse: dict[str, Reuse] = {}
    for name in order[: order.index(from_phase)]:
        ps = old.phase(name)
        if not (ps.status == "completed" or (ps.status == "skipped" and ps.output_digest)):
            continue  # not recorded: the new run runs it again
        spec = local.phases.get(name) if local else None
        if old.plan.phase(name).map_over:
            items = [ps.item_states[i] for i in range(ps.item_count or 0)]
            for i, it in enumerate(items):
                if not it.artifact:
                    continue  # an item of a partial fan-out that failed: null downstream
                if it.output_digest:
                    ann = spec.returns if spec else None
                    await _verified(bus, it.artifact, it.output_digest, ann, f"{name}[{i}]")
                else:
                    await _verified(bus, it.artifact, "", None, f"{name}[{i}]")
            reuse[name] = Reuse(output_digest=ps.output_digest, items=[it.artifact for it in items])
        else:
            await _verified(
                bus, ps.artifact, ps.output_digest, spec.returns if spec else None, name
            )
            reuse[name] = Reuse(
                output_digest=ps.output_digest, artifact=ps.artifact, item_count=ps.item_count
            )
    return Resume(old, reuse, from_phase)
