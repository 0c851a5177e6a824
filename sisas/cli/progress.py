"""Watching a run: a live per-phase display fed by the run's signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Column
from rich.text import Text

from sisas.bus.presence import orchestrator_live, worker_live
from sisas.bus.runtime import Bus
from sisas.errors import SisasError
from sisas.services.admission import waiting_note
from sisas.services.hosting import no_worker_note, queued_note
from sisas.signals import (
    ContractChecked,
    CorruptMessage,
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
    RunStarted,
    Signal,
)

__all__ = ["HINT_AFTER", "RunResult", "advise", "progress_display", "watch_run"]

HINT_AFTER: Final = 5.0
"""Seconds a command waits before it says what keeps a run from moving."""


@dataclass
class RunResult:
    """How a watched run ended, for the summary and ``--json``."""

    run_id: str
    pipeline: str
    status: str = "running"
    fingerprint: str = ""
    failed_phase: str = ""
    error: str = ""
    error_kind: str = ""
    signals: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    failed_invariants: list[dict[str, Any]] = field(default_factory=list)
    corrupt: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    """Semantic digest of each phase's output, from ``run_completed``."""
    values: dict[str, Any] = field(default_factory=dict)
    """Small outputs, decoded (``run --wait --json``)."""
    first_at: datetime | None = None
    ended_at: datetime | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """Phases that did not run (not reused by a resume), and why."""

    @property
    def recorded_duration(self) -> float | None:
        """Seconds from the run's first signal to the one that ended it, as recorded
        (what ``sisas show`` and ``runs`` print), when both were seen."""
        if self.first_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.first_at).total_seconds()

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "signals": self.signals,
        }
        if self.status != "running":
            data["fingerprint"] = self.fingerprint or None
        if self.outputs:
            data["outputs"] = self.outputs
            data["values"] = self.values
        if self.skipped:
            data["skipped"] = self.skipped
        if self.failed_phase or self.error:
            data.update(
                failed_phase=self.failed_phase, error=self.error, error_kind=self.error_kind
            )
        if self.violations:
            data["violations"] = self.violations
        if self.failed_invariants:
            data["failed_invariants"] = self.failed_invariants
        return data


class _Display:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.item_seconds: dict[str, float] = {}
        """Seconds of work of a fan-out's completed items, by phase."""
        self.item_failures: dict[str, int] = {}

    def row(
        self,
        phase: str,
        text: str,
        *,
        total: float | None = None,
        advance: float = 0,
        done: bool = False,
    ) -> None:
        if self.progress is None:
            return
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=1, state="pending")
        task = self.tasks[phase]
        if total is not None:
            self.progress.update(task, total=total)
        if done:
            t = self.progress.tasks[task].total or 1
            self.progress.update(task, completed=t)
        self.progress.update(task, advance=advance, state=text)


_IN_FLIGHT = ("scheduled", "running", "retry", "started")


def _settle_rows(display: _Display, text: str, *, pending: bool) -> None:
    """Show ``text`` on every row still in flight when the run ended (and, with
    ``pending``, on those that never started): nothing runs on. Rows that failed or
    were skipped keep what they say."""
    progress = display.progress
    if progress is None:
        return
    for task_id in display.tasks.values():
        task = progress.tasks[task_id]
        state = str(task.fields.get("state", ""))
        going = any(word in state for word in _IN_FLIGHT) or (pending and "pending" in state)
        if not task.finished and going:
            progress.update(task_id, state=text)


def _apply(display: _Display, result: RunResult, s: Signal) -> None:
    body, phase = s.body, s.phase
    if isinstance(body, RunStarted):
        for name in body.phases:
            display.row(name, "pending")
    elif isinstance(body, PhaseScheduled):
        if body.item is None:
            # Numbered as ctx.attempt: attempt 1 is the first retry.
            display.row(phase, f"scheduled (retry {s.attempt})" if s.attempt else "scheduled")
        elif body.item == 0:
            display.row(phase, f"fanned out over {body.items} items", total=body.items)
    elif isinstance(body, PhaseStarted) and body.item is None:
        display.row(phase, f"running on {body.worker}")
    elif isinstance(body, PhaseCompleted):
        if body.item is not None:
            display.item_seconds[phase] = display.item_seconds.get(phase, 0.0) + body.duration
            display.row(phase, "items", advance=1)
        else:
            seconds = body.duration or display.item_seconds.get(phase, 0.0)
            failed = display.item_failures.get(phase, 0)
            note = f", [yellow]{failed} failed attempts[/]" if failed else ""
            if s.attempt:
                retries = "retry" if s.attempt == 1 else "retries"
                note += f", [yellow]after {s.attempt} {retries}[/]"
            display.row(phase, f"[green]completed[/] in {seconds:.3f}s{note}", done=True)
    elif isinstance(body, PhaseRetryScheduled):
        display.row(phase, f"[yellow]retry in {body.delay:.2f}s[/]: {body.reason}")
    elif isinstance(body, PhaseFailed) and body.item is not None:
        display.item_failures[phase] = display.item_failures.get(phase, 0) + 1
        display.row(phase, f"[yellow]item {body.item} failed[/]: {body.error.message}")
    elif isinstance(body, PhaseFailed):
        display.row(phase, f"[red]failed[/]: {body.error.kind}: {body.error.message}")
    elif isinstance(body, PhaseTimedOut):
        display.row(phase, f"[red]timed out[/] after {body.timeout}s")
    elif isinstance(body, PhaseSkipped):
        why = body.reason.replace("_", " ")
        display.row(phase, f"[dim]skipped ({why})[/]", done=True)
        if body.reason != "resumed":
            result.skipped[phase] = why + (f": {body.detail}" if body.detail else "")
    elif isinstance(body, ContractChecked) and not body.passed:
        result.violations += [
            {
                "phase": phase,
                "contract": body.contract,
                "boundary": body.boundary,
                "path": v.path,
                "message": v.message,
            }
            for v in body.violations
        ]
    elif isinstance(body, InvariantChecked) and not body.passed:
        result.failed_invariants.append(
            {
                "phase": phase,
                "invariant": body.invariant,
                "description": body.description,
                "observed": body.observed,
                "expected": body.expected,
            }
        )
    elif isinstance(body, RunCompleted):
        result.status, result.fingerprint = "completed", body.fingerprint
        result.outputs = dict(body.outputs)
    elif isinstance(body, RunFailed):
        result.status, result.failed_phase = "failed", body.failed_phase
        result.error, result.error_kind = body.error.message, body.error.kind
        _settle_rows(display, "[dim]stopped: the run failed[/]", pending=False)
    elif isinstance(body, RunCancelled):
        result.status, result.error = "cancelled", body.reason
        _settle_rows(display, "[yellow]cancelled[/]", pending=True)


class _StateColumn(ProgressColumn):
    """A row's state on one line, cut with an ellipsis to the width the bars, counts and
    phase names leave: a long error must not squeeze them out (the full text is in the
    summary printed when the run ends)."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(overflow="ellipsis"))

    def render(self, task: Task) -> Text:
        text = Text.from_markup(str(task.fields["state"]).split("\n", 1)[0])
        text.no_wrap, text.overflow = True, "ellipsis"
        return text


def progress_display(console: Console) -> Progress:
    """The live per-phase rows: name, bar, done/total, state."""
    fixed = Column(no_wrap=True)
    return Progress(
        TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=12)),
        BarColumn(bar_width=24, table_column=fixed),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        _StateColumn(),
        console=console,
        transient=False,
    )


async def advise(
    bus: Bus,
    pipeline: str,
    code: str,
    *,
    notes: Console,
    started: Callable[[], bool],
    every: float = HINT_AFTER,
    run_id: str = "",
) -> None:
    """Say once, ``every`` seconds in, what keeps a run from moving: it waits for a slot
    under a concurrency limit (``run_id``: the run to look for in the queues), no
    orchestrator took the request (it is queued), or no live worker runs ``pipeline``
    (with the fix); check again every ``every`` seconds until both are said or the
    caller cancels this."""
    orchestrator_said = worker_said = False
    while not (orchestrator_said and worker_said):
        await asyncio.sleep(every)
        try:
            if not orchestrator_said:
                orchestrator_said = True
                if not started():
                    waiting = await waiting_note(bus, run_id, pipeline) if run_id else ""
                    if waiting:
                        notes.print(f"[yellow]{waiting}; still waiting[/]")
                    elif await orchestrator_live(bus.wire):
                        notes.print(
                            "[yellow]an orchestrator runs but has not taken the request yet "
                            "(busy?); still waiting[/]"
                        )
                    else:
                        notes.print(
                            f"[yellow]{queued_note()}; still waiting (Ctrl-C stops "
                            "waiting, the request stays queued)[/]"
                        )
            if not worker_said and not await worker_live(bus.wire, pipeline):
                worker_said = True
                notes.print(f"[yellow]{no_worker_note(pipeline, code)}[/]")
        except SisasError:
            return  # advice is a courtesy: never let it end the wait


async def watch_run(
    bus: Bus,
    run_id: str,
    pipeline: str,
    *,
    console: Console | None,
    notes: Console | None = None,
    code: str = "MODULE_OR_FILE",
    hint_after: float = HINT_AFTER,
) -> RunResult:
    """Follow ``run_id`` until it ends, drawing progress on ``console`` (None: silent).

    Waits as long as it takes: a request no orchestrator has taken stays queued and runs
    when one starts. ``notes`` (None: ``console``) gets, once, what keeps the run from
    moving (see :func:`advise`).
    """
    result = RunResult(run_id=run_id, pipeline=pipeline)
    progress = progress_display(console) if console is not None else None
    display = _Display(progress)
    notes = notes or console
    advisor = (
        asyncio.create_task(
            advise(
                bus,
                pipeline,
                code,
                notes=notes,
                started=lambda: result.signals > 0,
                every=hint_after,
                run_id=run_id,
            )
        )
        if notes is not None
        else None
    )
    if progress is not None:
        progress.start()
    try:
        async with contextlib.aclosing(bus.log.follow_run(run_id)) as records:
            async for rec in records:
                if isinstance(rec, CorruptMessage):
                    result.corrupt += 1
                    continue
                result.signals += 1
                if result.first_at is None:
                    result.first_at = rec.signal.at
                _apply(display, result, rec.signal)
                if result.status != "running":
                    result.ended_at = rec.signal.at
                    break
    finally:
        if advisor is not None:
            advisor.cancel()
        if progress is not None:
            progress.stop()
    return result
