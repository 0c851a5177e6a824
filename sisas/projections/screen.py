"""What the projection shows of a run: its signals, less those ``sisas replay verify`` flags.

The hash chain cannot tell a signal the orchestrator decided from one an outside client
appended with a correct link (docs/replay.md, "Placement rules: what the chain cannot
see"). Verify finds those with the placement rules of :mod:`sisas.replay.rules`, the
run's signatures and its chain; the projection applies the same per-run checks to each
signal as it arrives, against the same state verify holds at that point, so it flags
what verify flags:

- a signal that extends the run's chain is checked for its id, its signature (as verify
  without ``--trust``: a signature present must verify, a signed run stays signed, by
  one key) and its place (:func:`sisas.replay.rules.violation`). It is folded into the
  run's ``state`` either way (the orchestrator folds it too, and verify refolds it), into
  what the projection shows only when nothing was flagged;
- a signal that does not extend the chain (a gap, a broken link, a duplicate, a fork),
  one holding a number the tables cannot store, and a message on the run's subjects
  that is not a valid signal are folded into nothing (the projector keeps them in
  ``rejected``) and flag the run too.

The first flagged signal of a run is its :class:`~sisas.projections.rows.Tamper`. Pure:
one check per signal, never a rescan of the run; ``hash_at`` is asked at most once per
run (is a signal behind the run's head a duplicate or a fork?).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from msgspec.structs import replace

from sisas.handlers.state import RunState, evolve
from sisas.projections.rows import Tamper, Tracked, out_of_range
from sisas.replay.rules import violation
from sisas.signals.chain import ChainHead
from sisas.signals.envelope import Signal, signal_id
from sisas.signals.records import CorruptMessage, StoredSignal
from sisas.signals.signing import check_signature

__all__ = ["HashAt", "Step", "screen_corrupt", "screen_run", "screen_signal"]

HashAt = Callable[[str, int], str | None]
"""``(run_id, seq)`` -> the hash of that run's signal ``seq`` as folded, or None."""

Problem = tuple[str, str]


class Step(NamedTuple):
    """A run after one of its signals."""

    tracked: Tracked | None
    """The run (None: the signal starts no chain and the run is not known)."""
    rejected: str
    """Why the signal is folded into nothing; empty when it extends the run's chain."""
    shown: bool
    """Whether it is folded into what the projection shows."""


def screen_signal(t: Tracked | None, stream_seq: int, s: Signal, hash_at: HashAt) -> Step:
    """``t`` (None for a run not seen yet) after ``s``, stored at ``stream_seq``."""
    known = t
    if t is None:
        t = Tracked(RunState.new(s.pipeline, s.run_id), stream_seq, stream_seq)
    unstorable = out_of_range(s)
    if unstorable is not None:
        flagged = None if known is None else _flag(known, stream_seq, ("corrupt", unstorable))
        return Step(flagged, unstorable, False)
    gap = t.tamper
    if gap is not None and gap.missing is not None and gap.missing[0] <= s.seq <= gap.missing[1]:
        t = replace(t, tamper=_reordered(gap, gap.missing, stream_seq, s.seq))
    head = t.state.head
    broken = _chain_break(head, s, hash_at)
    if broken is not None:
        problem, missing = broken
        reason = (
            f"signal {s.id} does not extend its run's chain: the run's last signal is "
            f"seq {head.seq} with hash {head.hash[:19]}…, this one has seq {s.seq} and "
            f"prev {s.prev[:19]}…"
        )
        return Step(
            None if known is None else _flag(t, stream_seq, problem, missing), reason, False
        )
    found, signers = _signature(t.signers, s)
    if s.id != signal_id(s.run_id, s.seq):  # verify records it before the signature's
        found = ("bad_id", f"id {s.id!r} should be {signal_id(s.run_id, s.seq)!r}")
    if found is None:
        found = violation(t.state, s)
    state = evolve(t.state, s)
    if found is None:
        shown = None if t.shown is None else evolve(t.shown, s)
        tracked = Tracked(state, t.first_stream_seq, stream_seq, shown, t.tamper, signers)
        return Step(tracked, "", True)
    tamper = t.tamper or Tamper(stream_seq=stream_seq, problem=found[0], message=found[1])
    return Step(Tracked(state, t.first_stream_seq, stream_seq, t.view, tamper, signers), "", False)


def screen_corrupt(t: Tracked, record: CorruptMessage) -> Tracked:
    """``t`` after a message on its subjects that is not a valid signal."""
    reason = record.reason
    if reason.startswith("hash mismatch"):
        problem = "tampered"  # a changed byte
    elif " is stored on " in reason:
        problem = "misplaced"
    else:
        problem = "corrupt"
    return _flag(t, record.stream_seq, (problem, reason))


def screen_run(
    records: Iterable[StoredSignal | CorruptMessage],
) -> tuple[Tracked | None, list[Signal]]:
    """One run's records, in stream order, screened as the projector screens them: the
    run, and the signals folded into what it shows."""
    t: Tracked | None = None
    shown: list[Signal] = []
    hashes: dict[int, str] = {}
    for record in records:
        if isinstance(record, CorruptMessage):
            t = None if t is None else screen_corrupt(t, record)
            continue
        s = record.signal
        step = screen_signal(t, record.stream_seq, s, lambda _run, seq: hashes.get(seq))
        if not step.rejected:
            hashes.setdefault(s.seq, s.hash)
        if step.shown:
            shown.append(s)
        t = step.tracked or t
    return t, shown


def _flag(
    t: Tracked, stream_seq: int, problem: Problem, missing: tuple[int, int] | None = None
) -> Tracked:
    """``t`` marked tampered at ``stream_seq``, unless it was already (the first stays)."""
    if t.tamper is not None:
        return t
    tamper = Tamper(stream_seq=stream_seq, problem=problem[0], message=problem[1], missing=missing)
    return replace(t, tamper=tamper)


def _reordered(gap: Tamper, missing: tuple[int, int], stream_seq: int, seq: int) -> Tamper:
    """The run's first problem once ``seq``, missing from its gap, is stored after it:
    verify then calls the gap ``reordered`` (at the gap's stream sequence)."""
    message = (
        f"seq {seq} is stored after seq {missing[1] + 1} "
        f"(at stream seq {stream_seq}, not before {gap.stream_seq})"
    )
    return Tamper(stream_seq=gap.stream_seq, problem="reordered", message=message)


def _chain_break(
    head: ChainHead, s: Signal, hash_at: HashAt
) -> tuple[Problem, tuple[int, int] | None] | None:
    """Verify's problem with ``s`` when it does not extend the chain ending at ``head``."""
    expected = head.seq + 1
    if s.seq > expected:
        last = s.seq - 1
        what = f"seq {expected}" if expected == last else f"seq {expected}..{last}"
        return ("gap", f"{what} missing before seq {s.seq}"), (expected, last)
    if s.seq < expected:
        earlier = head.hash if s.seq == head.seq else hash_at(s.run_id, s.seq)
        if earlier == s.hash:
            return ("duplicate", f"seq {s.seq} is stored twice"), None
        return ("fork", f"a second, different signal claims seq {s.seq}"), None
    if s.prev != head.hash:
        return ("broken_link", f"prev of seq {s.seq} is not the hash of seq {s.seq - 1}"), None
    if s.pipeline != head.pipeline:
        return (
            "misplaced",
            f"a signal of pipeline {s.pipeline} in run {s.run_id} of pipeline {head.pipeline}",
        ), None
    return None


def _signature(signers: tuple[str, ...], s: Signal) -> tuple[Problem | None, tuple[str, ...]]:
    """Verify's signature check without ``--trust`` (``RunVerifier._signature``): the
    problem with ``s``'s signature, and the run's signers after it."""
    if not s.sig:
        return (("unsigned", "signal is not signed in a signed run") if signers else None), signers
    check = check_signature(s)
    if check.status == "invalid":
        return ("bad_signature", check.message), signers
    if not signers:
        return None, (check.signer,)
    if check.signer in signers:
        return None, signers
    changed = f"signed by {check.signer[:12]}…, the run's earlier signals by {signers[0][:12]}…"
    return ("signer_changed", changed), (*signers, check.signer)
