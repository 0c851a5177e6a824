"""Canonical encoding of signals, and the strict decoder every reader uses.

Canonical form: JSON with sorted keys, no whitespace, fields equal to their default
omitted, no NaN or infinity, integers and floats as msgspec writes them. A signal's
wire bytes are exactly its canonical form, so a reader can refuse any message whose
bytes differ from the re-encoding of what they decode to.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from sisas.errors import MalformedSignal, TamperedSignal
from sisas.signals.envelope import Signal

__all__ = [
    "canonical",
    "content_hash",
    "decode_signal",
    "encode_signal",
    "hash_if_exact",
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


def hash_if_exact(unsealed: Signal) -> str | None:
    """:func:`content_hash` of a signal with no ``hash`` and no ``sig`` yet, or None when
    its canonical bytes would not decode to it (:func:`survives_encoding`): one encoding
    serves both (sealing a signal only adds its hash, a hex string, which always does)."""
    data = _ENCODER.encode(unsealed)
    try:
        if _DECODER.decode(data) != unsealed:
            return None
    except msgspec.ValidationError:
        return None
    return hashlib.sha256(data).hexdigest()


def encode_signal(signal: Signal) -> bytes:
    """The wire bytes of a sealed signal."""
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
