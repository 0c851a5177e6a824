"""What a reader of the log gets for each stored message: a signal, or why not.

Readers never raise on bad content: a message that is not a valid signal becomes a
:class:`CorruptMessage` carrying its stream sequence and the reason, and a hole in the
stream's sequence becomes a :class:`LogGap`.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from sisas.errors import SignalError
from sisas.signals.codec import decode_signal
from sisas.signals.envelope import Signal
from sisas.signals.names import log_subject, parse_log_subject

__all__ = ["CorruptMessage", "LogGap", "LogRecord", "StoredSignal", "decode_record"]


class StoredSignal(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A verified signal and the stream sequence it is stored at."""

    stream_seq: int
    signal: Signal


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
    if subject != expected and parse_log_subject(subject) is not None:
        return CorruptMessage(
            stream_seq=stream_seq,
            subject=subject,
            size=len(data),
            reason=f"signal {signal.id} is stored on {subject}, its subject is {expected}",
        )
    return StoredSignal(stream_seq=stream_seq, signal=signal)
