"""What the dashboard shows, computed from signals: a run page's bounded summary, the
pages of a fan-out's items and of a run's checks, and the one-line event each signal
becomes on the live stream. Pure: no I/O.

The summary (:func:`run_view`) is bounded in size whatever the number of items: a
fan-out phase is one row with counts by status, duration percentiles and its slowest
and failed items; the timeline has one lane per fan-out (how many of its items ran at
each moment), one bar per attempt of a plain phase; checks come grouped by phase and
contract or invariant id, failures first. What grows with the run is paged:
:func:`items_page` and :func:`checks_page`.

Attempts are numbered from 0 everywhere, as ``ctx.attempt``.

The run page shows a run as the projection does (:mod:`sisas.projections.screen`): the
signals ``sisas replay verify`` flags are left out, and the first is named."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sisas.dashboard.detail import Attempt, CheckRow, RunDetail, build_detail, iso
from sisas.dashboard.index import RunIndex
from sisas.handlers.state import PhaseState, RunState
from sisas.handlers.tables import ItemState
from sisas.signals import Signal
from sisas.signals.records import CorruptMessage, StoredSignal
from sisas.signals.summary import first_line, signal_summary

__all__ = [
    "ITEM_ORDERS",
    "MAX_PAGE",
    "attempt_log",
    "build_detail",
    "checks_page",
    "event_of",
    "items_page",
    "run_view",
    "screened_detail",
    "screened_run_view",
]

BUCKETS: Final = 120
"""Time slices of a fan-out's lane on the timeline."""
SHOWN: Final = 5
"""Slowest and failed items named in a fan-out's row."""
GROUPS: Final = 100
"""Check groups in the summary (a plan has far fewer; the rest are counted)."""
INCIDENTS: Final = 20
"""Latest retries and errors in the summary (the rest are counted)."""
ITEM_BARS: Final = 24
"""A fan-out of at most this many attempts is drawn one bar per attempt, not as one lane."""
LANES: Final = 60
"""Timeline lanes drawn; past that, the rest are counted."""
MAX_PAGE: Final = 500
LONGEST_ERROR: Final = 4000
"""Characters of an error's whole text in the summary (per phase) or a page (per item)."""
ITEM_ORDERS: Final = ("problems", "index", "slowest")
_BAD: Final = frozenset({"failed", "timed_out", "cancelled"})


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
        "at": iso(signal.at),
        "summary": signal_summary(signal),
    }


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of sorted values (nearest rank), or None of none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _item_duration(detail: RunDetail, phase: str, i: int, it: ItemState) -> float | None:
    if it.status == "completed":
        return it.duration
    bar = detail.latest(phase, i, it.attempt)
    return None if bar is None else bar.elapsed(detail.last_at)


def _error_text(it: ItemState | PhaseState) -> str:
    return "" if it.error is None else f"{it.error.kind}: {first_line(it.error.message)}"


def _error_full(it: ItemState | PhaseState) -> str:
    """The whole error (message and detail: a traceback when the phase raised), cut to
    :data:`LONGEST_ERROR` characters; empty when the first line says it all."""
    if it.error is None:
        return ""
    text = it.error.message.strip()
    if it.error.detail:
        text += "\n\n" + it.error.detail.strip()
    if text == first_line(it.error.message):
        return ""
    return text if len(text) <= LONGEST_ERROR else text[: LONGEST_ERROR - 1] + "…"


def _fanout(detail: RunDetail, name: str, ps: PhaseState) -> dict[str, Any]:
    """A fan-out phase in one row: counts by status, percentiles, slowest and failed."""
    counts: dict[str, int] = {}
    durations: list[tuple[float, int]] = []
    failed: list[tuple[int, int, ItemState]] = []  # (rank, index, item): bad first
    retried = 0
    for i, it in ps.item_states.items():
        counts[it.status] = counts.get(it.status, 0) + 1
        if it.status == "completed":
            durations.append((it.duration, i))
        if it.attempt:
            retried += 1
        if it.status in _BAD or it.attempt:
            failed.append((0 if it.status in _BAD else 1, i, it))
    ordered = sorted(d for d, _ in durations)
    slowest = heapq.nlargest(SHOWN, durations)
    return {
        "counts": counts,
        "retried": retried,
        "p50": _percentile(ordered, 0.5),
        "p95": _percentile(ordered, 0.95),
        "max": ordered[-1] if ordered else None,
        "slowest": [{"item": i, "duration": d} for d, i in slowest],
        "failed": [
            {"item": i, "status": it.status, "attempt": it.attempt, "error": _error_text(it)}
            for _, i, it in heapq.nsmallest(SHOWN, failed, key=lambda f: (f[0], f[1]))
        ],
        "failed_total": len(failed),
    }


def _logs(detail: RunDetail, phase: str, item: int | None, last: int) -> list[list[int]]:
    """``[attempt, lines]`` of each attempt of a phase or item, up to ``last``, that
    wrote a log (a phase has at most its retries + 1 attempts: bounded)."""
    out = []
    for n in range(last + 1):
        bar = detail.latest(phase, item, n)
        if bar is not None and bar.log:
            out.append([n, bar.log_lines])
    return out


def attempt_log(detail: RunDetail, phase: str, item: int | None, attempt: int) -> Attempt | None:
    """The attempt whose log is asked for, when it has one."""
    bar = detail.latest(phase, item, attempt)
    return bar if bar is not None and bar.log else None


def _duration(detail: RunDetail, name: str, ps: PhaseState) -> float | None:
    """A plain phase's run time (its successful attempt's, else its latest attempt's so
    far); a fan-out's wall time, first item scheduled to last ended (or now)."""
    if ps.items is None:
        if ps.status == "completed" and ps.duration:
            return ps.duration
        bar = detail.latest(name, None, ps.attempt)
        return None if bar is None else bar.elapsed(detail.last_at)
    if ps.scheduled_at is None:
        return None
    end = ps.ended_at or detail.last_at
    return None if end is None else max((end - ps.scheduled_at).total_seconds(), 0.0)


def _phases(detail: RunDetail) -> list[dict[str, Any]]:
    """Each phase with its dependencies, status, a (column, row) place in the DAG, its
    duration, and, fanned out, its items in one summary."""
    state = detail.state
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
        shown_error = items is None or ps.status in ("failed", "timed_out")
        nodes.append(
            {
                "name": p.name,
                "depends_on": list(p.depends_on),
                "status": ps.status,
                "col": col,
                "row": row,
                "attempt": ps.attempt,
                "attempts": ps.attempt + 1 if ps.scheduled_at else 0,
                "items": items,
                "items_done": ps.item_states.count("completed") if items is not None else None,
                "duration": _duration(detail, p.name, ps),
                # A fan-out's error is an item's: said by its items unless it failed.
                "error": None if ps.error is None or not shown_error else _error_text(ps),
                "error_full": _error_full(ps) if shown_error else "",
                "logs": [] if ps.items is not None else _logs(detail, p.name, None, ps.attempt),
                "skip_reason": ps.skip_reason,
                "quarantined": ps.quarantined,
                "output_digest": ps.output_digest,
                "map_over": p.map_over,
                "fanout": None if items is None else _fanout(detail, p.name, ps),
            }
        )
    return nodes


def _density(bars: list[Attempt], start: datetime, span: float, end: datetime) -> dict[str, Any]:
    """How many of a fan-out's attempts ran in each of :data:`BUCKETS` slices of its
    span, and how many ended badly in each: O(attempts + BUCKETS)."""
    running = [0] * (BUCKETS + 1)
    bad = [0] * BUCKETS

    def slot(at: datetime) -> int:
        return min(BUCKETS - 1, max(0, int((at - start).total_seconds() / span * BUCKETS)))

    for b in bars:
        if b.started is None:  # it waited and never ran (cancelled while waiting)
            continue
        first, last = slot(b.started), slot(b.ended or end)
        running[first] += 1
        running[last + 1] -= 1
        if b.status in _BAD:
            bad[last] += 1
    density, level = [], 0
    for k in range(BUCKETS):
        level += running[k]
        density.append(level)
    return {"density": density, "bad": bad}


def _timeline(detail: RunDetail) -> dict[str, Any]:
    """Lanes in plan order: one bar per attempt of a plain phase or of a small fan-out
    (:data:`ITEM_BARS`); one lane per bigger fan-out, its items' density over its span.
    At most :data:`LANES`, the rest counted."""
    bars: dict[str, list[Attempt]] = {}
    for a in detail.attempts.values():
        bars.setdefault(a.phase, []).append(a)
    starts = [a.scheduled for a in detail.attempts.values() if a.scheduled is not None]
    lanes: list[dict[str, Any]] = []
    end = detail.state.ended_at or detail.last_at
    if not starts or end is None:
        return {"start": None, "end": None, "lanes": [], "hidden": 0}
    order = [p.name for p in detail.state.plan.phases] if detail.state.plan else list(bars)
    for name in order:
        phase_bars = bars.get(name, [])
        ps = detail.state.phase(name)
        items = [b for b in phase_bars if b.item is not None]
        for b in (
            phase_bars if len(items) <= ITEM_BARS else (b for b in phase_bars if b.item is None)
        ):
            lanes.append(
                {
                    "kind": "attempt",
                    "phase": name,
                    "item": b.item,
                    "attempt": b.attempt,
                    "status": b.status,
                    "start": iso(b.started or b.scheduled),
                    "end": iso(b.ended),
                    "worker": b.worker,
                    "error": b.error,
                }
            )
        if len(items) > ITEM_BARS:
            first = min((b.started or b.scheduled or end) for b in items)
            last = max((b.ended or end) for b in items)
            span = max((last - first).total_seconds(), 1e-6)
            lane = {
                "kind": "items",
                "phase": name,
                "status": ps.status,
                "items": ps.items,
                "attempts": len(items),
                "start": iso(first),
                "end": iso(last),
            }
            lanes.append(lane | _density(items, first, span, last))
    return {
        "start": iso(min(starts)),
        "end": iso(end),
        "lanes": lanes[:LANES],
        "hidden": max(0, len(lanes) - LANES),
    }


def _check_groups(detail: RunDetail) -> dict[str, Any]:
    """Checks grouped by phase and contract or invariant id, failing groups first."""
    ordered = sorted(detail.groups.items(), key=lambda kg: (kg[1].failed == 0, -kg[1].failed))
    groups = [
        {
            "group": key,
            "phase": g.phase,
            "type": g.type,
            "name": g.name,
            "passed": g.passed,
            "failed": g.failed,
            "last_failure": None if g.last_failure is None else _check_json(g.last_failure),
        }
        for key, g in ordered[:GROUPS]
    ]
    return {
        "total": len(detail.checks),
        "failed": sum(g.failed for g in detail.groups.values()),
        "groups_total": len(ordered),
        "groups": groups,
    }


def _check_json(c: CheckRow) -> dict[str, Any]:
    return {
        "seq": c.seq, "phase": c.phase, "item": c.item, "attempt": c.attempt, "type": c.type,
        "name": c.name, "group": c.group, "passed": c.passed, "detail": c.detail,
        "observed": c.observed, "expected": c.expected,
    }  # fmt: skip


def _incidents(detail: RunDetail) -> dict[str, Any]:
    latest = detail.incidents[-INCIDENTS:]
    return {
        "total": len(detail.incidents),
        "latest": [
            {
                "seq": s.seq,
                "kind": s.kind,
                "phase": s.phase,
                "item": getattr(s.body, "item", None),
                "attempt": s.attempt,
                "at": iso(s.at),
                "summary": signal_summary(s),
            }
            for s in latest
        ],
    }


def run_view(
    signals: Sequence[Signal] | None = None,
    *,
    state: RunState | None = None,
    detail: RunDetail | None = None,
) -> dict[str, Any]:
    """Everything the run page draws, bounded in size whatever the run's: from its
    ``detail``, or from its signals in order (``state``: their fold, when known)."""
    if detail is None:
        detail = build_detail(signals or [], state=state)
    state = detail.state
    return {
        "run_id": state.run_id,
        "pipeline": state.pipeline,
        "version": state.plan.version if state.plan else "",
        "status": state.status,
        "seed": state.seed,
        "fingerprint": state.fingerprint,
        "error": None if state.error is None else f"{state.error.kind}: {state.error.message}",
        "failed_phase": state.failed_phase,
        "resume_of": state.resume_of,
        "tags": dict(state.tags),
        "requested_at": iso(state.requested_at),
        "started_at": iso(state.started_at),
        "ended_at": iso(state.ended_at),
        "signals": detail.stored if detail.stored is not None else detail.signals,
        "tampered": detail.tampered,
        "last_seq": detail.last_seq,
        "phases": _phases(detail),
        "timeline": _timeline(detail),
        "checks": _check_groups(detail),
        "incidents": _incidents(detail),
    }


def _page(rows: list[Any], offset: int, limit: int) -> tuple[int, list[Any]]:
    return len(rows), rows[offset : offset + limit]


def _problems_first(row: tuple[int, ItemState, float | None, Attempt | None]) -> tuple[Any, ...]:
    """Failed, timed out or cancelled items, then retried ones (by index), then the
    rest, slowest first."""
    i, it, duration, _ = row
    if it.status in _BAD:
        return (0, i)
    if it.attempt:
        return (1, i)
    return (2, -(duration or 0.0), i)


def items_page(
    detail: RunDetail,
    phase: str,
    *,
    offset: int = 0,
    limit: int = 50,
    q: str = "",
    status: str = "",
    order: str = "problems",
) -> dict[str, Any] | None:
    """One page of a fan-out phase's items, or None when ``phase`` has no items.

    ``q`` keeps items whose index is ``q`` or whose error or worker holds it; ``status``
    those in that status; ``order``: ``problems`` (failed, then retried, then slowest),
    ``index`` or ``slowest``."""
    ps = detail.state.phases.get(phase)
    if ps is None or ps.items is None:
        return None
    needle = q.strip().lower()
    rows: list[tuple[int, ItemState, float | None, Attempt | None]] = []
    for i, it in ps.item_states.items():
        if status and it.status != status:
            continue
        bar = detail.latest(phase, i, it.attempt)
        if needle and not (
            needle == str(i)
            or needle in _error_text(it).lower()
            or needle in (it.worker or (bar.worker if bar else "")).lower()
        ):
            continue
        rows.append((i, it, _item_duration(detail, phase, i, it), bar))
    if order == "slowest":
        rows.sort(key=lambda r: -(r[2] or 0.0))
    elif order == "problems":
        rows.sort(key=_problems_first)
    matched, page = _page(rows, offset, limit)
    return {
        "phase": phase,
        "items": ps.items,
        "matched": matched,
        "offset": offset,
        "limit": limit,
        "rows": [
            {
                "item": i,
                "status": it.status,
                "attempt": it.attempt,
                "duration": d,
                "worker": it.worker or (bar.worker if bar else ""),
                "started": iso(bar.started) if bar else None,
                "ended": iso(bar.ended) if bar else None,
                "error": _error_text(it),
                "error_full": _error_full(it),
                "logs": _logs(detail, phase, i, it.attempt),
            }
            for i, it, d, bar in page
        ],
    }


def checks_page(
    detail: RunDetail,
    *,
    offset: int = 0,
    limit: int = 50,
    q: str = "",
    group: str = "",
    failed_only: bool = False,
) -> dict[str, Any]:
    """One page of a run's checks, failures first, then in log order: of one ``group``
    (phase/type/id), failed only, or holding ``q`` (an item index, or text of the id,
    phase or detail)."""
    needle = q.strip().lower()
    rows = [
        c
        for c in detail.checks
        if (not group or c.group == group)
        and (not failed_only or not c.passed)
        and (
            not needle
            or needle == str(c.item)
            or needle in c.name.lower()
            or needle in c.phase.lower()
            or needle in c.detail.lower()
        )
    ]
    rows.sort(key=lambda c: c.passed)  # stable: log order within each
    matched, page = _page(rows, offset, limit)
    return {
        "matched": matched,
        "offset": offset,
        "limit": limit,
        "rows": [_check_json(c) for c in page],
    }


def screened_detail(records: Sequence[StoredSignal | CorruptMessage]) -> RunDetail:
    """The detail of a run's stored records (in stream order) as the projection shows
    it: the signals verify flags left out, the first of them named in ``tampered``."""
    return RunIndex.of(records).detail


def screened_run_view(records: Sequence[StoredSignal | CorruptMessage]) -> dict[str, Any]:
    """The run page of a run's stored records (in stream order) as the projection shows
    it: ``tampered`` names the first signal verify flags (stream seq, problem, message),
    or is None; ``signals`` counts every stored signal."""
    return run_view(detail=screened_detail(records))
