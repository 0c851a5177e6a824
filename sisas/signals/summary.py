"""One short line saying what a signal says: for terminals, pages and reports."""

from __future__ import annotations

import msgspec

from sisas.signals.envelope import Signal
from sisas.signals.kinds import ContractChecked, InvariantChecked, PhaseCompleted, PhaseFailed

__all__ = ["signal_summary"]


def signal_summary(signal: Signal) -> str:
    """One short line saying what the body holds."""
    body = signal.body
    if isinstance(body, PhaseCompleted):
        return f"{body.output_digest[:19]}… in {body.duration:.3f}s"
    if isinstance(body, PhaseFailed):
        kept = (
            f" (output quarantined: {body.quarantined_artifact[:19]}…)"
            if body.quarantined_artifact
            else ""
        )
        return f"{body.error.kind}: {body.error.message}{kept}"
    if isinstance(body, ContractChecked):
        verdict = "passed" if body.passed else f"FAILED ({len(body.violations)} violations)"
        return f"{body.boundary} {body.contract} {verdict}"
    if isinstance(body, InvariantChecked):
        verdict = "passed" if body.passed else "FAILED"
        return f"{body.invariant} {verdict} (observed {body.observed!r})"
    fields = msgspec.structs.asdict(body)
    return ", ".join(f"{k}={v!r}" for k, v in fields.items() if v not in ("", None, {}, [], 0))
