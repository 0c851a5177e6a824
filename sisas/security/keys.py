"""Signing keys on disk: creating a seed, reading one into a :class:`Signer`."""

from __future__ import annotations

import secrets
from pathlib import Path

import nkeys

from sisas.errors import UsageError
from sisas.signals.signing import Signer

__all__ = ["generate_seed", "signer_from_file"]


def generate_seed() -> bytes:
    """A new nkey seed (``SU…``) for signing signals; keep it secret."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def signer_from_file(path: Path) -> Signer:
    """The signer whose seed ``path`` holds (``SISAS_SIGNING_KEY``)."""
    try:
        seed = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the signing key {path}: {exc.strerror}; check SISAS_SIGNING_KEY"
        ) from None
    return Signer(seed)
