"""Watching a run: a live per-phase display fed by the run's signals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from sisas.bus.jetstream_log import JetStreamLog
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
    StoredSignal,
)

__all__ = ["RunResult", "watch_run"]


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

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "signals": self.signals,
        }
        if self.status != "running":
            data["fingerprint"] = self.fingerprint or None
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


def _apply(display: _Display, result: RunResult, s: Signal) -> None:
    body, phase = s.body, s.phase
    if isinstance(body, RunStarted):
        for name in body.phases:
            display.row(name, "pending")
    elif isinstance(body, PhaseScheduled):
        if body.item is None:
            display.row(phase, f"scheduled (attempt {s.attempt + 1})" if s.attempt else "scheduled")
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
        display.row(phase, f"[dim]skipped ({body.reason})[/]", done=True)
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
    elif isinstance(body, RunFailed):
        result.status, result.failed_phase = "failed", body.failed_phase
        result.error, result.error_kind = body.error.message, body.error.kind
    elif isinstance(body, RunCancelled):
        result.status, result.error = "cancelled", body.reason


async def watch_run(
    log: JetStreamLog,
    run_id: str,
    pipeline: str,
    *,
    console: Console | None,
    hint_after: float = 10.0,
) -> RunResult:
    """Follow ``run_id`` until it ends, drawing progress on ``console`` (None: silent)."""
    result = RunResult(run_id=run_id, pipeline=pipeline)
    progress = (
        Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            console=console,
            transient=False,
        )
        if console
        else None
    )
    display = _Display(progress)
    stream = log.follow_run(run_id).__aiter__()
    if progress is not None:
        progress.start()
    try:
        while result.status == "running":
            try:
                rec = await asyncio.wait_for(
                    stream.__anext__(), hint_after if result.signals == 0 else None
                )
            except TimeoutError:
                if console is not None:
                    console.print(
                        "[yellow]no orchestrator has picked up the run yet: is "
                        "`sisas up` (or `sisas orchestrator`) running?[/]"
                    )
                hint_after = 3600.0
                continue
            if isinstance(rec, CorruptMessage):
                result.corrupt += 1
                continue
            assert isinstance(rec, StoredSignal)
            result.signals += 1
            _apply(display, result, rec.signal)
    finally:
        if progress is not None:
            progress.stop()
        await stream.aclose()  # type: ignore[attr-defined]
    return result
