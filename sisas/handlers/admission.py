"""Concurrency limits: at most ``limit`` runs of a pipeline hold a slot at once; the
others wait in a queue, highest priority first, then in the order they were asked for.

A limited pipeline's admission chain (``adm-PIPELINE``, pipeline ``admission``) holds
each decision: ``run_queued`` (no slot: the run waits) and ``run_released`` (a slot:
the request goes on to the orchestrator). Folding the chain gives who holds a slot and
who waits (:func:`evolve_admission`); the decisions are pure functions of that state,
the limit, and which of the slot holders the log says have ended.

Limits of tags (at most N runs carrying ``team=data`` at once, whatever their
pipeline) are decided in one chain, ``adm--tags`` (:data:`TAGS_CHAIN`): a run carrying
limited tags is released there when each of its tags' limits has room
(:func:`decide_tag_request`, :func:`decide_tag_release`). A run whose pipeline is
limited too passes its pipeline's chain first, then the tags' chain (it holds its
pipeline slot while it waits for its tags'): each chain is decided on its own, with its
expected last sequence, so no limit is ever exceeded however many services decide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from sisas.signals.kinds import RunQueued, RunReleased, RunWithdrawn

__all__ = [
    "TAGS_CHAIN",
    "AdmissionState",
    "Waiting",
    "admission_chain",
    "decide_release",
    "decide_tag_release",
    "decide_tag_request",
    "decide_withdrawal",
    "decide_request",
    "evolve_admission",
]


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    priority: int
    order: int
    """The place of its ``run_queued`` in the chain: earlier asks go first."""
    request_seq: int
    tags: tuple[str, ...] = ()
    """Its limited tags (``k=v``), in the tags' chain."""
    pipeline: str = ""


class AdmissionState(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a slot (released, not seen ended) and who waits."""

    holding: tuple[tuple[str, int], ...] = ()
    """Each slot holder's run id and where its request is in ``SISAS_ADMIT``."""
    waiting: tuple[Waiting, ...] = ()
    decided: int = 0
    """Decisions in the chain."""
    withdrawn: tuple[str, ...] = ()
    """Runs cancelled while they waited: never queued or released again."""
    tagged: dict[str, tuple[str, ...]] = {}
    """In the tags' chain: each slot holder's limited tags."""

    @property
    def holders(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.holding)

    def knows(self, run_id: str) -> bool:
        return (
            run_id in self.holders
            or run_id in self.withdrawn
            or any(w.run_id == run_id for w in self.waiting)
        )

    def waiting_of(self, run_id: str) -> Waiting | None:
        """``run_id``'s place in the queue, None when it does not wait."""
        return next((w for w in self.waiting if w.run_id == run_id), None)

    def next_up(self) -> Waiting | None:
        """The waiting run a freed slot goes to."""
        if not self.waiting:
            return None
        return min(self.waiting, key=lambda w: (-w.priority, w.order))


TAGS_CHAIN = "adm--tags"
"""The admission chain of runs carrying tags with a limit (no pipeline's chain: a
pipeline name never begins with ``-``)."""


def admission_chain(pipeline: str) -> str:
    """The run id of ``pipeline``'s admission chain (``adm-PIPELINE``)."""
    if len(pipeline) <= 60:
        return f"adm-{pipeline}"
    return f"adm-{pipeline[:47]}-{hashlib.sha256(pipeline.encode()).hexdigest()[:12]}"


def evolve_admission(
    state: AdmissionState, body: RunQueued | RunReleased | RunWithdrawn
) -> AdmissionState:
    """The state after one decision of the chain."""
    if isinstance(body, RunWithdrawn):
        return msgspec.structs.replace(
            state,
            waiting=tuple(w for w in state.waiting if w.run_id != body.run_id),
            withdrawn=(*state.withdrawn, body.run_id),
            decided=state.decided + 1,
        )
    if isinstance(body, RunQueued):
        waiting = Waiting(
            run_id=body.run_id,
            priority=body.priority,
            order=state.decided,
            request_seq=body.request_seq,
            tags=tuple(body.tag_limits),
            pipeline=body.pipeline,
        )
        return msgspec.structs.replace(
            state, waiting=(*state.waiting, waiting), decided=state.decided + 1
        )
    ended = set(body.ended)
    holding = tuple(h for h in state.holding if h[0] not in ended and h[0] != body.run_id)
    tagged = {r: t for r, t in state.tagged.items() if r not in ended}
    if body.tag_limits:
        tagged[body.run_id] = tuple(body.tag_limits)
    return AdmissionState(
        holding=(*holding, (body.run_id, body.request_seq)),
        waiting=tuple(w for w in state.waiting if w.run_id != body.run_id),
        decided=state.decided + 1,
        withdrawn=state.withdrawn,
        tagged=tagged,
    )


def _slots(limit: int, holding: int) -> str:
    return f"{holding} of {limit} runs hold a slot"


def decide_request(
    state: AdmissionState,
    pipeline: str,
    limit: int,
    run_id: str,
    *,
    priority: int,
    request_seq: int,
    ended: tuple[str, ...] = (),
) -> RunQueued | RunReleased | None:
    """What to do with a request of ``run_id``: None when the chain knows it already
    (a duplicate); released at once when a slot is free (``ended``: slot holders the
    log says have ended) and nobody waits before it; else queued."""
    if state.knows(run_id):
        return None
    holding = [r for r in state.holders if r not in ended]
    if len(holding) < limit and not state.waiting:
        return RunReleased(
            run_id=run_id,
            pipeline=pipeline,
            reason=f"{_slots(limit, len(holding))}: admitted at once",
            request_seq=request_seq,
            ended=list(ended),
        )
    ahead = sum(1 for w in state.waiting if w.priority >= priority)
    return RunQueued(
        run_id=run_id,
        pipeline=pipeline,
        priority=priority,
        request_seq=request_seq,
        reason=f"{_slots(limit, len(holding))} (max_concurrent_runs = {limit}): waits "
        f"behind {ahead} queued run{'s' if ahead != 1 else ''}",
        waits_for=f"pipeline {pipeline}",
    )


def decide_release(
    state: AdmissionState, pipeline: str, limit: int, ended: tuple[str, ...]
) -> RunReleased | None:
    """The next waiting run's release when a slot is free (``ended``: slot holders the
    log says have ended), else None."""
    nxt = state.next_up()
    holding = [r for r in state.holders if r not in ended]
    if nxt is None or len(holding) >= limit:
        return None
    freed = f"{', '.join(ended)} ended" if ended else "a slot is free"
    return RunReleased(
        run_id=nxt.run_id,
        pipeline=pipeline,
        reason=f"{freed}: {_slots(limit, len(holding))}; the first of "
        f"{len(state.waiting)} waiting (priority {nxt.priority}) goes",
        waited=True,
        request_seq=nxt.request_seq,
        ended=list(ended),
    )


def decide_withdrawal(
    state: AdmissionState, pipeline: str, run_id: str, reason: str, requested_by: str
) -> RunWithdrawn | None:
    """The withdrawal of ``run_id`` from the queue when it waits, else None (it holds a
    slot or was never asked for: the orchestrator cancels it as any run)."""
    waiting = state.waiting_of(run_id)
    if waiting is None:
        return None
    who = f" by {requested_by}" if requested_by else ""
    why = f" ({reason})" if reason else ""
    return RunWithdrawn(
        run_id=run_id,
        pipeline=pipeline,
        reason=f"cancelled while it waited for a slot{who}{why}: it leaves the queue of "
        f"{len(state.waiting)}, its slot never taken",
        requested_by=requested_by,
        request_seq=waiting.request_seq,
    )


# -- limits of tags (the chain adm--tags) -----------------------------------------------


def _tag_counts(state: AdmissionState, ended: tuple[str, ...]) -> dict[str, int]:
    """How many slot holders not ended carry each limited tag."""
    counts: dict[str, int] = {}
    for run_id in state.holders:
        if run_id not in ended:
            for tag in state.tagged.get(run_id, ()):
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def _full(tags: tuple[str, ...], counts: dict[str, int], limits: Mapping[str, int]) -> list[str]:
    """The tags among ``tags`` whose limits have no room (a tag without a limit has)."""
    return [t for t in tags if t in limits and counts.get(t, 0) >= limits[t]]


def _tag_slots(tag: str, counts: dict[str, int], limits: Mapping[str, int]) -> str:
    return f"tag {tag}: {counts.get(tag, 0)} of {limits[tag]} runs hold a slot"


def decide_tag_request(
    state: AdmissionState,
    pipeline: str,
    run_id: str,
    tags: tuple[str, ...],
    limits: Mapping[str, int],
    *,
    priority: int,
    request_seq: int,
    ended: tuple[str, ...] = (),
) -> RunQueued | RunReleased | None:
    """What to do with a request of ``run_id`` carrying the limited ``tags`` (``k=v``;
    ``limits``: every tag's limit): None when the chain knows it already; released at
    once when each of its tags' limits has room and no waiting run shares one of its
    tags; else queued, naming the limit it waits for."""
    if state.knows(run_id):
        return None
    counts = _tag_counts(state, ended)
    full = _full(tags, counts, limits)
    ahead = [w for w in state.waiting if set(w.tags) & set(tags) and w.priority >= priority]
    if not full and not [w for w in state.waiting if set(w.tags) & set(tags)]:
        room = "; ".join(_tag_slots(t, counts, limits) for t in tags if t in limits)
        return RunReleased(
            run_id=run_id,
            pipeline=pipeline,
            reason=f"{room}: admitted at once",
            request_seq=request_seq,
            ended=list(ended),
            tag_limits=list(tags),
        )
    if full:
        tag = full[0]
        why = f"{_tag_slots(tag, counts, limits)} (max_concurrent_runs = {limits[tag]})"
    else:
        tag = next(t for w in state.waiting for t in w.tags if t in tags)
        why = f"runs carrying tag {tag} wait already"
    return RunQueued(
        run_id=run_id,
        pipeline=pipeline,
        priority=priority,
        request_seq=request_seq,
        reason=f"{why}: waits behind {len(ahead)} queued run{'s' if len(ahead) != 1 else ''}",
        waits_for=f"tag {tag}",
        tag_limits=list(tags),
    )


def decide_tag_release(
    state: AdmissionState, limits: Mapping[str, int], ended: tuple[str, ...]
) -> RunReleased | None:
    """The release of the waiting run that goes first (highest priority, then the first
    asked) among those whose tags' limits all have room (``limits``: a lifted limit is
    missing or 0, and holds nothing back), else None."""
    counts = _tag_counts(state, ended)
    live = {t: n for t, n in limits.items() if n > 0}
    for w in sorted(state.waiting, key=lambda w: (-w.priority, w.order)):
        if _full(w.tags, counts, live):
            continue
        freed = f"{', '.join(ended)} ended" if ended else "a slot is free"
        room = "; ".join(_tag_slots(t, counts, live) for t in w.tags if t in live) or (
            "the limits of its tags were lifted"
        )
        return RunReleased(
            run_id=w.run_id,
            pipeline=w.pipeline,
            reason=f"{freed}: {room}; the first of {len(state.waiting)} waiting that fits "
            f"(priority {w.priority}) goes",
            waited=True,
            request_seq=w.request_seq,
            ended=list(ended),
            tag_limits=list(w.tags),
        )
    return None
