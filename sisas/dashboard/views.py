"""What the dashboard shows, computed from signals: a run's DAG, timeline and checks,
and the one-line event each signal becomes on the live stream. Pure: no I/O.

The run page shows a run as the projection does (:mod:`sisas.projections.screen`): the
signals ``sisas replay verify`` flags are left out, and the first is named."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sisas.handlers.state import RunState, fold
from sisas.projections.screen import screen_run
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
from sisas.signals.kinds import CircuitClosed, CircuitOpened
from sisas.signals.records import CorruptMessage, StoredSignal
from sisas.signals.summary import signal_summary

__all__ = ["event_of", "run_view", "screened_run_view"]


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


def event_of(stream_seq: int, signal: Signal) -> dict[str, Any]:
    """The live-stream event for one stored signal."""
    return {
        "stream_seq": stream_seq,
        "run_id": signal.run_id,
        "pipeline": signal.pipeline,
        "seq": signal.seq,
        "kind": signal.kind,
        "phase": signal.phase,
        "item": getattr(signal.body, "item", None),
        "attempt": signal.attempt,
        "at": _iso(signal.at),
        "summary": signal_summary(signal),
    }


def _layout(state: RunState) -> list[dict[str, Any]]:
    """Each phase with its dependencies, status and a (column, row) place in the DAG."""
    if state.plan is None:
        return []
    depth: dict[str, int] = {}
    for p in state.plan.phases:  # topological order
        depth[p.name] = 1 + max((depth[d] for d in p.depends_on), default=-1)
    rows: dict[int, int] = {}
    nodes = []
    for p in state.plan.phases:
        ps = state.phase(p.name)
        col = depth[p.name]
        row = rows.get(col, 0)
        rows[col] = row + 1
        items = ps.items
        done = ps.item_states.count("completed")
        nodes.append(
            {
                "name": p.name,
                "depends_on": list(p.depends_on),
                "status": ps.status,
                "col": col,
                "row": row,
                "attempts": ps.attempt + 1 if ps.scheduled_at else 0,
                "items": items,
                "items_done": done if items is not None else None,
                "error": None if ps.error is None else f"{ps.error.kind}: {ps.error.message}",
                "skip_reason": ps.skip_reason,
                "quarantined": ps.quarantined,
                "output_digest": ps.output_digest,
                "map_over": p.map_over,
            }
        )
    return nodes


def _timeline(signals: Sequence[Signal]) -> list[dict[str, Any]]:
    """One bar per attempt (per item when fanned out): scheduled, started, ended."""
    bars: dict[tuple[str, int | None, int], dict[str, Any]] = {}
    for s in signals:
        body = s.body
        item = getattr(body, "item", None)
        key = (s.phase, item, s.attempt)
        if isinstance(body, PhaseScheduled):
            bars[key] = {
                "phase": s.phase,
                "item": item,
                "attempt": s.attempt,
                "scheduled": _iso(s.at),
                "started": None,
                "ended": None,
                "status": "scheduled",
                "worker": "",
            }
        elif key in bars:
            bar = bars[key]
            if isinstance(body, PhaseStarted):
                bar.update(started=_iso(s.at), status="running", worker=body.worker)
            elif isinstance(body, PhaseCompleted):
                bar.update(ended=_iso(s.at), status="completed")
            elif isinstance(body, PhaseFailed):
                bar.update(ended=_iso(s.at), status="failed", error=body.error.message)
            elif isinstance(body, PhaseTimedOut):
                bar.update(ended=_iso(s.at), status="timed_out")
    return list(bars.values())


def _checks(signals: Sequence[Signal]) -> list[dict[str, Any]]:
    out = []
    for s in signals:
        body = s.body
        if isinstance(body, ContractChecked):
            detail = "; ".join(f"{v.path}: {v.message}" for v in body.violations)
            name, kind = f"{body.boundary}:{body.contract}", "contract"
        elif isinstance(body, InvariantChecked):
            detail = (
                "" if body.passed else f"observed {body.observed!r}, expected {body.expected!r}"
            )
            name, kind = body.invariant, "invariant"
        else:
            continue
        out.append(
            {
                "seq": s.seq,
                "phase": s.phase,
                "item": body.item,
                "attempt": s.attempt,
                "type": kind,
                "name": name,
                "passed": body.passed,
                "detail": detail,
            }
        )
    return out


_INCIDENTS = (PhaseFailed, PhaseRetryScheduled, PhaseTimedOut, CircuitOpened, CircuitClosed)


def run_view(signals: Sequence[Signal], *, state: RunState | None = None) -> dict[str, Any]:
    """Everything the run page draws, from the run's signals in order (``state``: their
    fold, when the caller has it)."""
    state = fold(signals) if state is None else state
    incidents = [
        {
            "seq": s.seq,
            "kind": s.kind,
            "phase": s.phase,
            "item": getattr(s.body, "item", None),
            "attempt": s.attempt,
            "at": _iso(s.at),
            "summary": signal_summary(s),
        }
        for s in signals
        if isinstance(s.body, _INCIDENTS)
    ]
    return {
        "run_id": state.run_id,
        "pipeline": state.pipeline,
        "version": state.plan.version if state.plan else "",
        "status": state.status,
        "seed": state.seed,
        "fingerprint": state.fingerprint,
        "error": None if state.error is None else f"{state.error.kind}: {state.error.message}",
        "failed_phase": state.failed_phase,
        "requested_at": _iso(state.requested_at),
        "started_at": _iso(state.started_at),
        "ended_at": _iso(state.ended_at),
        "signals": len(signals),
        "last_seq": signals[-1].seq if signals else 0,
        "phases": _layout(state),
        "timeline": _timeline(signals),
        "checks": _checks(signals),
        "incidents": incidents,
    }


def screened_run_view(records: Sequence[StoredSignal | CorruptMessage]) -> dict[str, Any]:
    """The run page of a run's stored records (in stream order) as the projection shows
    it: the signals verify flags left out; ``tampered`` names the first (stream seq,
    problem, message), or is None; ``signals`` counts every stored signal."""
    tracked, shown = screen_run(records)
    view = run_view(shown, state=None if tracked is None else tracked.view)
    view["signals"] = sum(isinstance(r, StoredSignal) for r in records)
    tamper = None if tracked is None else tracked.tamper
    view["tampered"] = (
        None
        if tamper is None
        else {"stream_seq": tamper.stream_seq, "problem": tamper.problem, "message": tamper.message}
    )
    return view
