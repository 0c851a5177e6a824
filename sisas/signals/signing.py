"""Ed25519 signatures of signals, with NATS nkeys as the key format.

The orchestrator that appends a signal signs its ``hash`` (which covers every other
field), so a signal written by anyone without the key, however well it extends the
chain, fails verification. ``sig`` is ``<public nkey>.<base64url signature>``; it lies
outside the hashed content, so signing changes no hash and no link. Ed25519 is
deterministic: signing the same signal twice gives the same bytes, so a retried append
is still recognised as a duplicate.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

from sisas.errors import UsageError
from sisas.signals.envelope import Signal

__all__ = ["SignatureCheck", "Signer", "check_signature", "public_key_bytes"]


class Signer:
    """Signs signals with one nkey seed."""

    def __init__(self, seed: bytes) -> None:
        """``seed``: an nkey seed (``SU…``); reading it from a file is the shell's job
        (:func:`sisas.security.keys.signer_from_file`)."""
        try:
            self._pair = nkeys.from_seed(bytearray(seed.strip()))
        except (nkeys.NkeysError, binascii.Error, ValueError, IndexError) as exc:
            raise UsageError(
                f"the signing key is not an nkey seed ({type(exc).__name__}): create one "
                "with `sisas keys generate --out FILE`"
            ) from None
        self.public_key: str = self._pair.public_key.decode()

    def sign(self, signal: Signal) -> Signal:
        """``signal`` with its ``sig`` set (it must be sealed: the hash is what is signed)."""
        raw = self._pair.sign(signal.hash.encode())
        text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return msgspec.structs.replace(signal, sig=f"{self.public_key}.{text}")


def public_key_bytes(public_key: str) -> bytes:
    """The raw 32-byte ed25519 key of a public nkey; raises ``ValueError`` if it is not one."""
    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except binascii.Error:
        raise ValueError(f"{public_key[:12]}… is not base32") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise ValueError(f"{public_key[:12]}… is not a public nkey")
    if nkeys.crc16_checksum(raw[:33]) != raw[33:]:
        raise ValueError(f"{public_key[:12]}… has a bad checksum")
    return raw[1:33]


class SignatureCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of checking one signal's signature."""

    status: Literal["valid", "unsigned", "invalid", "untrusted"]
    signer: str = ""
    message: str = ""


_KEYS: dict[str, nacl.signing.VerifyKey] = {}


def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    key = _KEYS.get(public_key)
    if key is None:
        key = nacl.signing.VerifyKey(public_key_bytes(public_key))
        if len(_KEYS) < 1024:
            _KEYS[public_key] = key
    return key


def check_signature(signal: Signal, trusted: frozenset[str] = frozenset()) -> SignatureCheck:
    """Check ``signal.sig`` against its ``hash``; with ``trusted`` keys, also its signer."""
    if not signal.sig:
        return SignatureCheck(status="unsigned", message="the signal carries no signature")
    signer, _, text = signal.sig.partition(".")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        _verify_key(signer).verify(signal.hash.encode(), raw)
    except (ValueError, binascii.Error, nacl.exceptions.BadSignatureError) as exc:
        why = str(exc) if isinstance(exc, ValueError) else "the signature does not match"
        return SignatureCheck(status="invalid", signer=signer, message=f"bad signature: {why}")
    if trusted and signer not in trusted:
        return SignatureCheck(
            status="untrusted",
            signer=signer,
            message=f"signed by {signer[:12]}…, which is not a trusted key",
        )
    return SignatureCheck(status="valid", signer=signer)
