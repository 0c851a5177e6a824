"""What a reader of the log gets for each stored message: a signal, or why not.

Readers never raise on bad content: a message that is not a valid signal becomes a
:class:`CorruptMessage` carrying its stream sequence and the reason, and a hole in the
stream's sequence becomes a :class:`LogGap`.

A message holds one signal (log format 1, on ``sisas.run.<p>.<r>.<phase|_>.<kind>``) or
a commit (format 2, on ``sisas.run.<p>.<r>.c``): the signals of one decision, each with
its own id, seq, prev and hash, in the canonical bytes ``{"commit":2,"signals":[...]}``.
A commit is valid only whole: every signal valid, all of the subject's run, chained one
to the next. Anything else makes the whole message one :class:`CorruptMessage`, named at
its stream sequence, so a forged or reordered commit is never half-read.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypeAlias

import msgspec

from sisas.errors import SignalError
from sisas.signals.codec import decode_signal, encode_signal
from sisas.signals.envelope import Signal
from sisas.signals.names import COMMIT_TOKEN, commit_subject, log_subject, parse_run_subject

__all__ = [
    "COMMIT_FORMAT",
    "COMMIT_HEAD",
    "CorruptMessage",
    "LogGap",
    "LogRecord",
    "StoredSignal",
    "commit_id",
    "decode_record",
    "decode_records",
    "encode_commit",
]

COMMIT_FORMAT = 2
"""The log format a commit message carries (format 1: one signal per message)."""
COMMIT_HEAD = b'{"commit":%d,"signals":[' % COMMIT_FORMAT


class StoredSignal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A verified signal and where it is stored: the stream sequence of its message, and
    its index among the ``of`` signals of that message (a commit holds several)."""

    stream_seq: int
    signal: Signal
    index: int = 0
    of: int = 1
    commit: bool = False
    """Whether its message is a commit (log format 2) rather than a lone signal."""

    @property
    def last_in_message(self) -> bool:
        """True for the last signal of its message (a reader may checkpoint after it)."""
        return self.index == self.of - 1


class CorruptMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A message on a log subject that is not a valid signal, and why."""

    stream_seq: int
    subject: str
    reason: str
    size: int = 0


class LogGap(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Stream sequences ``first..last`` are missing: the broker lost or skipped them."""

    first: int
    last: int


LogRecord: TypeAlias = StoredSignal | CorruptMessage | LogGap


def decode_record(stream_seq: int, subject: str, data: bytes) -> StoredSignal | CorruptMessage:
    """Decode one stored message, checking its bytes, hash and subject.

    Never raises for bad content; returns a :class:`CorruptMessage` instead.
    """
    try:
        signal = decode_signal(data)
    except SignalError as exc:
        return CorruptMessage(
            stream_seq=stream_seq, subject=subject, reason=str(exc), size=len(data)
        )
    expected = log_subject(signal.pipeline, signal.run_id, signal.phase, signal.kind)
    if subject.endswith("." + COMMIT_TOKEN) and subject.count(".") == 4:
        expected = commit_subject(signal.pipeline, signal.run_id)  # a line of a bundle
    if subject != expected and parse_run_subject(subject) is not None:
        return CorruptMessage(
            stream_seq=stream_seq,
            subject=subject,
            size=len(data),
            reason=f"signal {signal.id} is stored on {subject}, its subject is {expected}",
        )
    return StoredSignal(stream_seq=stream_seq, signal=signal)


class _CommitWire(msgspec.Struct, forbid_unknown_fields=True):
    commit: int
    signals: list[msgspec.Raw]


_COMMIT_DECODER = msgspec.json.Decoder(_CommitWire)


def encode_commit(signals: Sequence[Signal]) -> bytes:
    """The canonical bytes of a commit of consecutive signals of one run."""
    return COMMIT_HEAD + b",".join(encode_signal(s) for s in signals) + b"]}"


def commit_id(signals: Sequence[Signal]) -> str:
    """The commit's deterministic message id (JetStream dedup): its first signal's id,
    its last seq and the last signal's hash (which chains every signal before it), so the
    same decision appended twice is stored once, and a rival decision at the same place
    is never taken for it."""
    return f"{signals[0].id}..{signals[-1].seq}.{signals[-1].hash[:16]}"


def decode_records(
    stream_seq: int, subject: str, data: bytes
) -> list[StoredSignal | CorruptMessage]:
    """Decode one stored message of either format into its records, in chain order.

    Never raises for bad content: a bad format-1 message or any flaw in a commit gives a
    single :class:`CorruptMessage`.
    """
    if subject.endswith("." + COMMIT_TOKEN) and subject.count(".") == 4:
        return _decode_commit(stream_seq, subject, data)
    return [decode_record(stream_seq, subject, data)]


def _decode_commit(
    stream_seq: int, subject: str, data: bytes
) -> list[StoredSignal | CorruptMessage]:
    def corrupt(reason: str) -> list[StoredSignal | CorruptMessage]:
        return [
            CorruptMessage(stream_seq=stream_seq, subject=subject, reason=reason, size=len(data))
        ]

    try:
        wire = _COMMIT_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        return corrupt(f"not a valid commit: {exc}")
    except (msgspec.DecodeError, ValueError) as exc:
        return corrupt(f"not JSON: {exc}")
    if wire.commit != COMMIT_FORMAT:
        return corrupt(f"commit of log format {wire.commit}, this sisas reads {COMMIT_FORMAT}")
    if not wire.signals:
        return corrupt("an empty commit")
    signals: list[Signal] = []
    for i, raw in enumerate(wire.signals):
        try:
            signals.append(decode_signal(memoryview(raw)))
        except SignalError as exc:
            return corrupt(f"signal {i} of the commit: {exc}")
    first = signals[0]
    expected_subject = commit_subject(first.pipeline, first.run_id)
    if subject != expected_subject:
        return corrupt(f"a commit of run {first.run_id} is stored on {subject}")
    for prev, cur in itertools.pairwise(signals):
        if cur.run_id != first.run_id or cur.pipeline != first.pipeline:
            return corrupt(f"a commit spans two runs ({first.run_id} and {cur.run_id})")
        if cur.seq != prev.seq + 1 or cur.prev != prev.hash:
            return corrupt(
                f"signals {prev.id} and {cur.id} of the commit are not consecutive in the chain"
            )
    if encode_commit(signals) != data:
        return corrupt("commit not in canonical form (bytes differ from the re-encoded commit)")
    n = len(signals)
    return [
        StoredSignal(stream_seq=stream_seq, signal=s, index=i, of=n, commit=True)
        for i, s in enumerate(signals)
    ]
