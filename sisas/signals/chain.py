"""The per-run hash chain: sealing drafts into signals and verifying a run's chain.

Pure functions: time and ids come from the drafts, never from the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from sisas.errors import MalformedSignal
from sisas.signals import codec
from sisas.signals.envelope import GENESIS, Signal, signal_id
from sisas.signals.kinds import Body
from sisas.signals.names import check_name

__all__ = ["ChainHead", "ChainIssue", "Draft", "seal", "verify_chain"]


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    """A signal not yet placed in its run: what a handler decides."""

    body: Body
    at: Annotated[datetime, msgspec.Meta(tz=True)]
    phase: str = ""
    attempt: int = 0
    causation: str = ""


class ChainHead(msgspec.Struct, frozen=True, kw_only=True):
    """Where a run's chain ends: its last seq and hash (seq 0 and GENESIS when empty)."""

    pipeline: str
    run_id: str
    seq: int = 0
    hash: str = GENESIS

    def extend(self, drafts: Iterable[Draft]) -> tuple[list[Signal], ChainHead]:
        """Seal ``drafts`` in order after this head; return them and the new head."""
        head = self
        sealed: list[Signal] = []
        for draft in drafts:
            signal = seal(head, draft)
            sealed.append(signal)
            head = ChainHead(
                pipeline=self.pipeline, run_id=self.run_id, seq=signal.seq, hash=signal.hash
            )
        return sealed, head

    @classmethod
    def after(cls, signal: Signal) -> ChainHead:
        """The head of a chain whose last signal is ``signal``."""
        return cls(pipeline=signal.pipeline, run_id=signal.run_id, seq=signal.seq, hash=signal.hash)


def seal(head: ChainHead, draft: Draft) -> Signal:
    """Turn ``draft`` into the signal that follows ``head``.

    Raises :class:`sisas.errors.InvalidName` for names that cannot be subject tokens
    and :class:`MalformedSignal` for content the canonical form cannot carry exactly
    (NaN or infinite floats).
    """
    check_name(head.pipeline, "pipeline name")
    check_name(head.run_id, "run id")
    seq = head.seq + 1
    unsealed = Signal(
        id=signal_id(head.run_id, seq),
        run_id=head.run_id,
        pipeline=head.pipeline,
        seq=seq,
        at=draft.at,
        prev=head.hash,
        body=draft.body,
        phase=draft.phase,
        attempt=draft.attempt,
        causation=draft.causation,
    )
    signal = codec.seal_exact(unsealed)
    if signal is None:
        raise MalformedSignal(
            f"signal {unsealed.id} ({unsealed.kind}) cannot be encoded exactly: "
            "replace NaN or infinite floats with None or a finite value"
        ) from None
    return signal


class ChainIssue(msgspec.Struct, frozen=True, kw_only=True):
    """One defect found in a run's chain, at the signal with ``seq``."""

    seq: int
    problem: Literal["gap", "broken_link", "duplicate", "foreign", "bad_id"]
    message: str


def verify_chain(signals: Sequence[Signal], *, run_id: str | None = None) -> list[ChainIssue]:
    """Check that ``signals`` form one unbroken chain starting at seq 1.

    Every signal is assumed decoded by :func:`codec.decode_signal` (its own hash already
    verified); this checks order, gaps, duplicates, links and ids. Returns the issues in
    order, empty when the chain is intact.
    """
    issues: list[ChainIssue] = []
    expected_seq, prev_hash = 1, GENESIS
    run = run_id if run_id is not None else (signals[0].run_id if signals else None)
    for s in signals:
        if s.run_id != run:
            issues.append(
                ChainIssue(
                    seq=s.seq, problem="foreign", message=f"signal {s.id} belongs to run {s.run_id}"
                )
            )
            continue
        if s.seq < expected_seq:
            issues.append(
                ChainIssue(
                    seq=s.seq,
                    problem="duplicate",
                    message=f"seq {s.seq} appears again after {expected_seq - 1}",
                )
            )
            continue
        if s.seq > expected_seq:
            issues.append(
                ChainIssue(
                    seq=s.seq, problem="gap", message=f"seq {expected_seq}..{s.seq - 1} missing"
                )
            )
        elif s.prev != prev_hash:
            issues.append(
                ChainIssue(
                    seq=s.seq,
                    problem="broken_link",
                    message=f"prev of seq {s.seq} does not match the hash of seq {s.seq - 1}",
                )
            )
        if s.id != signal_id(s.run_id, s.seq):
            want = signal_id(s.run_id, s.seq)
            issues.append(
                ChainIssue(seq=s.seq, problem="bad_id", message=f"id {s.id!r} should be {want!r}")
            )
        expected_seq, prev_hash = s.seq + 1, s.hash
    return issues
