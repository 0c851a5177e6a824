"""One short line saying what a signal says: for terminals, pages and reports.

A summary never holds a Python repr or a multi-line text: a recorded plan is its name,
version and number of phases, an error is its kind and the first line of its message
(the traceback stays in the signal, for ``--json`` and ``sisas show``), digests are cut
to their first 12 hex digits. The full content is the signal itself.
"""

from __future__ import annotations

import msgspec

from sisas.signals.envelope import Signal
from sisas.signals.kinds import (
    BackfillFinished,
    BackfillRequested,
    Body,
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

__all__ = ["first_line", "scalar_text", "signal_summary"]

LONGEST = 160
"""Characters of one free text (a message, a reason) kept in a summary."""


def first_line(text: str, limit: int = LONGEST) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters (``…`` when cut)."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    more = len(line) > limit or line != text.strip()
    if len(line) > limit:
        line = line[: limit - 1]
    return line + "…" if more else line


def scalar_text(value: Scalar) -> str:
    """A recorded scalar as a reader writes it: ``1.1``, ``true``, ``[0.0, 3.0]``, ``none``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return first_line(value, 80)
    return str(value)


def _digest(digest: str) -> str:
    return f"{digest[:19]}…" if digest else "-"


def _error(error: ErrorInfo) -> str:
    return f"{error.kind}: {first_line(error.message)}"


def _config(config: dict[str, Scalar]) -> str:
    return "set " + ", ".join(f"{k}={scalar_text(v)}" for k, v in sorted(config.items()))


def _run(body: RunRequested | RunStarted) -> list[str]:
    parts: list[str] = []
    if isinstance(body, RunStarted):
        if body.plan is not None:
            parts.append(
                f"plan {body.plan.name} {body.plan.version}, {len(body.plan.phases)} phases"
            )
        else:
            parts.append(f"version {body.pipeline_version}, {len(body.phases)} phases")
        parts += [f"seed {body.seed}", f"code {_digest(body.fingerprint)}"]
    else:
        if body.requested_by:
            parts.append(f"by {body.requested_by}")
        if body.seed is not None:
            parts.append(f"seed {body.seed}")
        if body.idempotency_key:
            parts.append(f"key {body.idempotency_key}")
    if body.input_digest:
        parts.append(f"input {_digest(body.input_digest)}")
    if body.config:
        parts.append(_config(body.config))
    if body.resume_of:
        frm = getattr(body, "resume_from_phase", "")
        parts.append(f"resumes {body.resume_of}" + (f" from {frm}" if frm else ""))
    if body.batch_id:
        parts.append(f"batch {body.batch_id}")
    return parts


def _phase(body: Body) -> str | None:
    """The summary of a phase-level body, or None for other kinds."""
    if isinstance(body, PhaseScheduled):
        parts = [f"fan-out of {body.items} items"] if body.items is not None else []
        if body.inputs:
            parts.append("inputs " + ", ".join(body.inputs))
        if body.gathered:
            parts.append("gathers " + ", ".join(body.gathered))
        if body.delay:
            parts.append(f"after {body.delay:.3g} s")
        if body.timeout is not None:
            parts.append(f"timeout {body.timeout:g} s")
        return ", ".join(parts)
    if isinstance(body, PhaseStarted):
        return f"on {body.worker}" if body.worker else ""
    if isinstance(body, PhaseCompleted):
        return f"{_digest(body.output_digest)} in {body.duration:.3f}s"
    if isinstance(body, PhaseFailed):
        kept = (
            f" (output quarantined: {_digest(body.quarantined_artifact)})"
            if body.quarantined_artifact
            else ""
        )
        return _error(body.error) + kept
    if isinstance(body, PhaseRetryScheduled):
        reason = f": {first_line(body.reason)}" if body.reason else ""
        return f"retry {body.next_attempt} in {body.delay:.3g} s{reason}"
    if isinstance(body, PhaseSkipped):
        text = body.reason + (f": {first_line(body.detail)}" if body.detail else "")
        if body.reused_digest:
            text += f", reuses {_digest(body.reused_digest)}"
        return text
    if isinstance(body, PhaseTimedOut):
        return f"after {body.timeout:g} s"
    if isinstance(body, ContractChecked):
        verdict = "passed" if body.passed else f"FAILED ({len(body.violations)} violations)"
        return f"{body.boundary} {body.contract} {verdict}"
    if isinstance(body, InvariantChecked):
        verdict = "passed" if body.passed else "FAILED"
        if body.observed is None and body.expected is None:
            return f"{body.invariant} {verdict}" + (
                f" ({first_line(body.description, 80)})" if body.description else ""
            )
        values = ", ".join(
            f"{name} {scalar_text(value)}"
            for name, value in (("observed", body.observed), ("expected", body.expected))
            if value is not None
        )
        return f"{body.invariant} {verdict} ({values})"
    return None


def _other(body: Body) -> str:
    if isinstance(body, RunRequested | RunStarted):
        return ", ".join(_run(body))
    if isinstance(body, RunCompleted):
        return f"fingerprint {_digest(body.fingerprint)}, {len(body.outputs)} outputs"
    if isinstance(body, RunFailed):
        where = f" in {body.failed_phase}" if body.failed_phase else ""
        return f"{body.error.kind}{where}: {first_line(body.error.message)}"
    if isinstance(body, RunCancelled):
        by = f" (by {body.requested_by})" if body.requested_by else ""
        return first_line(body.reason) + by
    if isinstance(body, CircuitOpened):
        return f"{body.scope} after {body.failures} failures: {first_line(body.reason)}"
    if isinstance(body, CircuitClosed):
        return f"{body.scope}: {first_line(body.reason)}"
    if isinstance(body, TriggerEvaluated):
        matched = [r for r in body.results if r.matched]
        text = f"{body.subject}: {len(matched)} of {len(body.results)} rules matched"
        runs = [r.run_id for r in matched if r.run_id]
        if runs:
            text += ", runs " + ", ".join(runs)
        if body.duplicate:
            text += " (duplicate)"
        return text + (f"; {first_line(body.error)}" if body.error else "")
    if isinstance(body, ScheduleTicked):
        run = f" {body.run_id}" if body.run_id else ""
        return f"{body.schedule} tick {body.tick}: {body.action}{run}: {first_line(body.reason)}"
    if isinstance(body, RunQueued | RunReleased | RunWithdrawn):
        return f"{body.pipeline} run {body.run_id}: {first_line(body.reason)}"
    if isinstance(body, BackfillRequested):
        return (
            f"{body.backfill_id} round {body.round}: {len(body.partitions)} partitions of "
            f"{body.pipeline}: {first_line(body.reason)}"
        )
    if isinstance(body, PartitionLaunched | PartitionSkipped):
        what = "launched" if isinstance(body, PartitionLaunched) else "skipped"
        run = f" {body.run_id}" if body.run_id else ""
        return f"partition {body.partition}: {what}{run}: {first_line(body.reason)}"
    if isinstance(body, BackfillFinished):
        return (
            f"{body.backfill_id} round {body.round}: {body.completed} completed, "
            f"{body.failed} failed, {body.skipped} skipped, {body.cancelled} cancelled"
        )
    # A kind added later: its scalar fields, never a repr of a nested value.
    fields = msgspec.structs.asdict(body)
    return ", ".join(
        f"{k}={scalar_text(v)}"
        for k, v in fields.items()
        if isinstance(v, str | int | float | bool) and v not in ("", 0, False)
    )


def signal_summary(signal: Signal) -> str:
    """One short line saying what the body holds (``item N:`` first for a fan-out item)."""
    body = signal.body
    text = _phase(body)
    if text is None:
        text = _other(body)
    item = getattr(body, "item", None)
    if item is None:
        return text
    return f"item {item}: {text}" if text else f"item {item}"
