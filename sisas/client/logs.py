"""Attempt logs: which attempts of a run wrote a log, and their text.

An attempt's log (``ctx.log`` at INFO and above, what the phase printed, the traceback
of an exception) is stored by digest and named by the attempt's outcome signal
(``phase_completed``, ``phase_failed``, ``phase_timed_out``: ``log``, ``log_lines``,
``log_dropped``), so it is as tamper-evident as an output and travels in audit bundles.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from sisas.signals import Signal
from sisas.signals.kinds import PhaseCompleted, PhaseFailed, PhaseTimedOut

__all__ = ["AttemptLogEntry", "attempt_log_entry", "attempt_logs"]


class AttemptLogEntry(msgspec.Struct, kw_only=True):
    """One attempt's log as its outcome names it; ``text`` once read from the store."""

    phase: str
    item: int | None
    attempt: int
    status: Literal["completed", "failed", "timed_out"]
    seq: int
    """The outcome signal's position in its run."""
    log: str
    """The artifact digest of the log ("" when the attempt wrote nothing)."""
    lines: int
    dropped: int
    text: str = ""

    @property
    def where(self) -> str:
        """``phase``, ``phase[item]``, with the attempt: ``score[3] attempt 1``."""
        item = "" if self.item is None else f"[{self.item}]"
        return f"{self.phase}{item} attempt {self.attempt}"


def attempt_log_entry(signal: Signal) -> AttemptLogEntry | None:
    """The log entry ``signal`` names, when it ends an attempt (None otherwise)."""
    body = signal.body
    status: Literal["completed", "failed", "timed_out"]
    if isinstance(body, PhaseCompleted):
        status = "completed"
    elif isinstance(body, PhaseFailed):
        if not body.worker and not body.log:
            return None  # decided by the orchestrator (a whole fan-out failed), no attempt
        status = "failed"
    elif isinstance(body, PhaseTimedOut):
        status = "timed_out"
    else:
        return None
    return AttemptLogEntry(
        phase=signal.phase,
        item=body.item,
        attempt=signal.attempt,
        status=status,
        seq=signal.seq,
        log=body.log,
        lines=body.log_lines,
        dropped=body.log_dropped,
    )


def attempt_logs(
    signals: Iterable[Signal], *, phase: str | None = None, item: int | None = None
) -> list[AttemptLogEntry]:
    """The attempts of ``signals`` that ended, once each, in log order (of ``phase``, of
    ``item``). An attempt that timed out may be named twice (``phase_timed_out``, then
    the ``phase_failed`` that ends its phase): the first signal that names a log wins."""
    out: dict[tuple[str, int | None, int], AttemptLogEntry] = {}
    for s in signals:
        entry = attempt_log_entry(s)
        if entry is None or (phase is not None and entry.phase != phase):
            continue
        if item is not None and entry.item != item:
            continue
        key = (entry.phase, entry.item, entry.attempt)
        if key not in out:
            out[key] = entry
        elif entry.log and not out[key].log:
            first = out[key]
            first.log, first.lines, first.dropped = entry.log, entry.lines, entry.dropped
    return list(out.values())
