"""Canonical encoding of signals, and the strict decoder every reader uses.

Canonical form: JSON with sorted keys, no whitespace, fields equal to their default
omitted, no NaN or infinity, integers and floats as msgspec writes them. A signal's
wire bytes are exactly its canonical form, so a reader can refuse any message whose
bytes differ from the re-encoding of what they decode to.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from typing import Final

import msgspec

from sisas.errors import MalformedSignal, TamperedSignal
from sisas.signals.envelope import Signal

__all__ = [
    "canonical",
    "content_hash",
    "decode_signal",
    "encode_signal",
    "seal_exact",
    "survives_encoding",
]

_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final = msgspec.json.Decoder(Signal)


def canonical(value: object) -> bytes:
    """Canonical JSON of any msgspec-encodable value (sorted keys, compact)."""
    return _ENCODER.encode(value)


def content_hash(signal: Signal) -> str:
    """The sha256 (hex) of the canonical encoding of ``signal`` without ``hash`` and ``sig``."""
    unsealed = msgspec.structs.replace(signal, hash="", sig="")
    return hashlib.sha256(_ENCODER.encode(unsealed)).hexdigest()


def _wire_content_hash(wire: bytes, signal: Signal) -> str:
    """:func:`content_hash` of a signal whose canonical bytes are ``wire``, without
    encoding it again: the unsealed encoding is ``wire`` minus its top-level
    ``,"hash":"…"`` member (and the ``sig`` member, last in sorted order). The hash
    member is the last occurrence of its text, because every key after ``hash`` in
    sorted order holds a name, an id, a digest or the signature, which cannot contain it."""
    if signal.sig:
        tail = b',"sig":"' + signal.sig.encode() + b'"}'
        if not wire.endswith(tail):  # pragma: no cover - canonical bytes always end so
            return content_hash(signal)
        wire = wire[: -len(tail)] + b"}"
    if not signal.hash:
        return hashlib.sha256(wire).hexdigest()
    member = b',"hash":"' + signal.hash.encode() + b'"'
    at = wire.rfind(member)
    if at < 0:  # pragma: no cover - canonical bytes of a sealed signal always hold it
        return content_hash(signal)
    h = hashlib.sha256(wire[:at])
    h.update(wire[at + len(member) :])
    return h.hexdigest()


def survives_encoding(signal: Signal) -> bool:
    """True when decoding the canonical bytes of ``signal`` gives back an equal signal.

    False for NaN or infinite floats (JSON has no way to write them) and anything else
    the encoding would silently change.
    """
    try:
        return bool(_DECODER.decode(_ENCODER.encode(signal)) == signal)
    except msgspec.ValidationError:
        return False


_SEALED: OrderedDict[int, tuple[Signal, bytes]] = OrderedDict()
"""The wire bytes of signals sealed here lately, by ``id``, with the signal itself (kept
alive while listed, so its ``id`` is its own): a decided signal is encoded for its
commit, its size check and its hand-over; sealing already had its bytes but for the
hash."""
_SEALED_MAX: Final = 4096


def seal_exact(unsealed: Signal) -> Signal | None:
    """``unsealed`` (no ``hash``, no ``sig``) with its :func:`content_hash`, or None when
    its canonical bytes would not decode to it (:func:`survives_encoding`; sealing only
    adds the hash, a hex string, which always does). One encoding serves the hash, the
    check and the sealed bytes: ``hash`` sorts just before ``id``, which every signal
    has, and only a name, an id, a digest or a number follows ``id``, so the last
    ``,"id":"`` is the signal's own."""
    data = _ENCODER.encode(unsealed)
    try:
        if _DECODER.decode(data) != unsealed:
            return None
    except msgspec.ValidationError:
        return None
    digest = hashlib.sha256(data).hexdigest()
    signal = msgspec.structs.replace(unsealed, hash=digest)
    at = data.rfind(b',"id":"')
    if at > 0:
        if len(_SEALED) >= _SEALED_MAX:
            with contextlib.suppress(KeyError):  # another thread took it first
                _SEALED.popitem(last=False)
        wire = data[:at] + b',"hash":"' + digest.encode() + b'"' + data[at:]
        _SEALED[id(signal)] = (signal, wire)
    return signal


def encode_signal(signal: Signal) -> bytes:
    """The wire bytes of a sealed signal."""
    known = _SEALED.get(id(signal))
    if known is not None and known[0] is signal:
        return known[1]
    return _ENCODER.encode(signal)


def decode_signal(data: bytes | memoryview) -> Signal:
    """Decode and verify one signal's wire bytes.

    Raises :class:`MalformedSignal` when the bytes are not a signal or not in canonical
    form, and :class:`TamperedSignal` when the recorded hash does not match the content.
    Guarantees: a returned signal re-encodes to exactly ``data`` and its hash is valid.
    """
    try:
        signal = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedSignal(f"not a valid signal: {exc}") from None
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8
        raise MalformedSignal(f"not JSON: {exc}") from None
    wire = bytes(data)
    if _ENCODER.encode(signal) != wire:
        raise MalformedSignal(
            "not in canonical form (bytes differ from the re-encoded signal): "
            "the message was altered or written by something other than sisas"
        )
    expected = _wire_content_hash(wire, signal)
    if signal.hash != expected:
        raise TamperedSignal(
            f"hash mismatch for {signal.id}: recorded {signal.hash[:16]}…, "
            f"content hashes to {expected[:16]}…"
        )
    return signal
