"""Evidence: the artifacts a run read or wrote, where it used each, and what to say when
one of them cannot be read as the log records it.

The log proves what happened (its chain); the artifacts are the evidence the log points
at by digest. A verdict keeps the two apart: a log can be intact while an output it names
is missing from the store or damaged there, and then no rerun or audit can vouch for what
rests on that output. Pure: signals in, names out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from sisas.replay.verdicts import ArtifactProblem
from sisas.signals.envelope import Signal
from sisas.signals.kinds import PhaseCompleted, PhaseFailed, PhaseTimedOut, RunRequested

__all__ = ["artifact_uses", "located"]


def artifact_uses(signals: Iterable[Signal]) -> dict[str, list[str]]:
    """Every artifact the run made of ``signals`` read or wrote, by digest, with each
    place it was used, in log order: ``run input``, ``output of compose``,
    ``quarantined output of score[3]``, ``input of publish``."""
    uses: dict[str, list[str]] = {}

    def add(digest: str, role: str) -> None:
        seen = uses.setdefault(digest, [])
        if role not in seen:
            seen.append(role)

    for s in signals:
        body = s.body
        item = getattr(body, "item", None)
        where = s.phase + ("" if item is None else f"[{item}]")
        if isinstance(body, RunRequested) and body.input_digest:
            add(body.input_digest, "run input")
        for name in ("artifact", "reused_artifact"):
            if getattr(body, name, ""):
                add(getattr(body, name), f"output of {where}")
        if isinstance(body, PhaseFailed) and body.quarantined_artifact:
            add(body.quarantined_artifact, f"quarantined output of {where}")
        if isinstance(body, PhaseCompleted | PhaseFailed | PhaseTimedOut) and body.log:
            add(body.log, f"log of {where} (attempt {s.attempt})")
        for digest in getattr(body, "reused_items", []):
            add(digest, f"output of an item of {where}")
        for digest in getattr(body, "inputs", {}).values():
            add(digest, f"input of {where}")
        for digests in getattr(body, "gathered", {}).values():
            for digest in filter(None, digests):  # "" is a failed item of a partial fan-out
                add(digest, f"input of {where}")
    return uses


def located(
    digest: str,
    problem: Literal["missing", "damaged"],
    detail: str,
    uses: Mapping[str, list[str]],
) -> ArtifactProblem:
    """The problem with ``digest``, named with where the run used it."""
    return ArtifactProblem(
        digest=digest, problem=problem, used_as=list(uses.get(digest, [])), detail=detail
    )
