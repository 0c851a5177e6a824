"""A run's attempts and checks, indexed once from its signals, for the run page's views.

:func:`build_detail` reads the signals in one pass and keeps, per attempt (of a phase, or
of one item of a fan-out), when it was scheduled, started and ended, and every contract
and invariant check as a row. The run page's summary, its item pages and its check pages
(:mod:`sisas.dashboard.views`) are computed from this, so one read of a run serves them
all (the dashboard caches it per run until the run has new signals). Pure: no I/O, no
clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from sisas.handlers.state import RunState, fold
from sisas.signals import (
    ContractChecked,
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    PhaseRetryScheduled,
    PhaseScheduled,
    PhaseStarted,
    PhaseTimedOut,
    Signal,
)
from sisas.signals.kinds import CircuitClosed, CircuitOpened, RunCancelled, RunFailed
from sisas.signals.summary import first_line, scalar_text

__all__ = ["Attempt", "CheckGroup", "CheckRow", "RunDetail", "build_detail", "iso"]

AttemptKey = tuple[str, int | None, int]
"""(phase, item or None, attempt): one attempt, numbered from 0 as ``ctx.attempt``."""

_INCIDENTS = (PhaseFailed, PhaseRetryScheduled, PhaseTimedOut, CircuitOpened, CircuitClosed)


def iso(at: datetime | None) -> str | None:
    """``at`` as ISO 8601 in UTC with a ``Z``, or None."""
    return None if at is None else at.isoformat().replace("+00:00", "Z")


class Attempt(msgspec.Struct, gc=False):
    """One attempt of a phase or of one item: its times, outcome and worker. (Not
    tracked by the garbage collector, as the fold's states are not: a 10,000-item run
    holds tens of thousands of them, and each collection would walk them all.)"""

    phase: str
    item: int | None
    attempt: int
    scheduled: datetime | None
    started: datetime | None = None
    ended: datetime | None = None
    status: str = "scheduled"
    worker: str = ""
    error: str = ""
    duration: float | None = None
    """Seconds the worker measured it ran (reported with its outcome), or None."""
    log: str = ""
    """The artifact digest of its log (``ctx.log``, what it printed, its traceback)."""
    log_lines: int = 0

    def elapsed(self, now: datetime | None) -> float | None:
        """Seconds from its start to its end, or to ``now`` while it runs; None when it
        never started (it waited, and may have been cancelled waiting)."""
        end = self.ended or now
        if self.started is None or end is None:
            return None
        return max((end - self.started).total_seconds(), 0.0)


class CheckRow(msgspec.Struct, frozen=True, gc=False):
    """One contract or invariant check, as a check list shows it."""

    seq: int
    phase: str
    item: int | None
    attempt: int
    type: str
    name: str
    passed: bool
    detail: str
    observed: str
    expected: str

    @property
    def group(self) -> str:
        """What checks are grouped by: the phase and the contract or invariant id."""
        return f"{self.phase}/{self.type}/{self.name}"


class CheckGroup(msgspec.Struct, gc=False):
    """The checks of one phase and contract or invariant id, counted."""

    phase: str
    type: str
    name: str
    passed: int = 0
    failed: int = 0
    last_failure: CheckRow | None = None


@dataclass(slots=True)
class RunDetail:
    """What the run page's views need of a run, read once from its signals."""

    state: RunState
    signals: int = 0
    last_seq: int = 0
    last_at: datetime | None = None
    attempts: dict[AttemptKey, Attempt] = field(default_factory=dict)
    checks: list[CheckRow] = field(default_factory=list)
    incidents: list[Signal] = field(default_factory=list)
    stored: int | None = None
    """Every stored signal of the run, flagged ones included (None: not read from a log)."""
    corrupt: int = 0
    """Messages on the run's subjects that are not valid signals."""
    tampered: dict[str, object] | None = None
    """The first signal ``sisas replay verify`` flags: stream seq, problem, message."""

    summary: tuple[tuple[int, int | None, int], bytes] | None = None
    """The run page's JSON as last built, and the counts it was built at (its signals
    shown, stored, corrupt): the pages of a run reloading at once share one build."""
    refresh: float = 0.25
    """Seconds between two reloads of its page at most, as its last summary said: its
    event stream gathers a run's changes for as long."""
    groups: dict[str, CheckGroup] = field(default_factory=dict)
    """The checks counted by :attr:`CheckRow.group`, in the order first seen."""

    def latest(self, phase: str, item: int | None, attempt: int) -> Attempt | None:
        return self.attempts.get((phase, item, attempt))

    def add(self, s: Signal) -> None:
        """Take in the run's next signal (its state is the caller's: :attr:`state`).
        O(1), but for the run's end, which settles the attempts still open."""
        self.signals += 1
        self.last_seq, self.last_at = s.seq, s.at
        body = s.body
        if isinstance(body, ContractChecked | InvariantChecked):
            self._check(_check_row(s, body))
            return
        item = getattr(body, "item", None)
        key = (s.phase, item, s.attempt)
        if isinstance(body, PhaseScheduled):
            self.attempts[key] = Attempt(s.phase, item, s.attempt, s.at)
            return
        if isinstance(body, _INCIDENTS):
            self.incidents.append(s)
        bar = self.attempts.get(key)
        if bar is None:
            if isinstance(body, RunCancelled | RunFailed):  # as the fold settles them
                for a in self.attempts.values():
                    if a.ended is None:
                        _ended(a, s.at, "cancelled")
            return
        if isinstance(body, PhaseStarted):
            bar.started, bar.status, bar.worker = s.at, "running", body.worker
            return
        if isinstance(body, PhaseCompleted):
            _ended(bar, s.at, "completed")
            bar.duration = body.duration
        elif isinstance(body, PhaseFailed):
            _ended(bar, s.at, "failed", f"{body.error.kind}: {first_line(body.error.message)}")
            bar.duration = body.duration
        elif isinstance(body, PhaseTimedOut):
            _ended(bar, s.at, "timed_out", f"Timeout: exceeded {body.timeout}s")
        else:
            return
        if body.log and not bar.log:  # the first outcome that names a log (sisas logs)
            bar.log, bar.log_lines = body.log, body.log_lines

    def _check(self, row: CheckRow) -> None:
        self.checks.append(row)
        group = self.groups.get(row.group)
        if group is None:
            group = self.groups[row.group] = CheckGroup(row.phase, row.type, row.name)
        if row.passed:
            group.passed += 1
        else:
            group.failed += 1
            group.last_failure = row


def _check_row(s: Signal, body: ContractChecked | InvariantChecked) -> CheckRow:
    if isinstance(body, ContractChecked):
        detail = "; ".join(f"{v.path}: {v.message}" for v in body.violations)
        return CheckRow(
            s.seq, s.phase, body.item, s.attempt, "contract",
            f"{body.boundary}:{body.contract}", body.passed, detail, "", "",
        )  # fmt: skip
    observed, expected = scalar_text(body.observed), scalar_text(body.expected)
    recorded = body.observed is not None or body.expected is not None
    detail = f"observed {observed}, expected {expected}" if recorded else ""
    return CheckRow(
        s.seq, s.phase, body.item, s.attempt, "invariant", body.invariant, body.passed,
        detail or body.description, observed if recorded else "", expected if recorded else "",
    )  # fmt: skip


def _ended(bar: Attempt, at: datetime, status: str, error: str = "") -> None:
    bar.ended, bar.status = at, status
    if error:
        bar.error = error


def build_detail(signals: Sequence[Signal], *, state: RunState | None = None) -> RunDetail:
    """The detail of a run from its signals in order (``state``: their fold, when the
    caller has it). One pass, O(signals)."""
    detail = RunDetail(state=fold(signals) if state is None else state)
    for s in signals:
        detail.add(s)
    return detail
