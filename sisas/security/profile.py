"""The secured profile on disk: one nkey user per role, the server's ``authorization``
block, an env file per role, and the orchestrator's signing key.

:func:`init_profile` writes into a folder::

    <role>.nk     nkey seed of the role's NATS user (mode 0600)
    <role>.env    what a shell sources to act as that role (SISAS_NATS_NKEY, ...)
    auth.conf     ``authorization { users: [...] }`` for nats-server (public keys only)
    signing.nk    the orchestrator's ed25519 signing key (mode 0600), kept on --force

Signing is on in this profile: orchestrator.env sets ``SISAS_SIGNING_KEY``, and every
sisas role's env file sets ``SISAS_TRUSTED_KEYS`` to its public key: ``sisas replay
verify`` then requires every signal to be signed by that key, and a worker (``sisas
worker``, or the one ``sisas up --pipelines`` runs) executes only work it signed.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import nkeys

from sisas.errors import SisasError, UsageError
from sisas.security.keys import generate_seed, signer_from_file
from sisas.security.permissions import (
    ROLE_NAMES,
    UPSTREAM_INBOX,
    auth_conf,
    check_upstream_subject,
)

__all__ = ["AUTH_FILE", "SIGNING_FILE", "Profile", "init_profile", "user_seed"]

AUTH_FILE: Final = "auth.conf"
SIGNING_FILE: Final = "signing.nk"
_TRUSTING: Final = ("orchestrator", "operator", "worker", "auditor")
"""Roles whose env file sets SISAS_TRUSTED_KEYS: verifiers, and whoever runs a worker."""


@dataclass
class Profile:
    """What :func:`init_profile` wrote."""

    folder: Path
    users: dict[str, str]
    """Role name → public nkey of its NATS user."""
    signing_public_key: str
    signing_kept: bool
    upstream: list[str]
    files: list[tuple[str, Path]] = field(default_factory=list)
    """(kind, path): kind is ``seed``, ``env``, ``auth`` or ``signing``."""


def user_seed() -> bytes:
    """A new nkey user seed (``SU…``) for a NATS user."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def _public(seed: bytes) -> str:
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return public.decode()


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the first byte (never world-readable meanwhile)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _env(role: str, folder: Path, url: str | None, signing: Path, trusted: str) -> str:
    seed = shlex.quote(str(folder / f"{role}.nk"))
    lines = [f"# sisas role {role}: `. {shlex.quote(str(folder / f'{role}.env'))}`"]
    if role == "upstream":
        lines += [
            "# For the nats CLI. A client library connects with this nkey seed; to receive",
            f"# JetStream acks it sets the custom inbox prefix {UPSTREAM_INBOX} (nats.go",
            f"# nats.CustomInboxPrefix, nats-py connect(inbox_prefix=...)): {UPSTREAM_INBOX}.>",
            "# is the only subject this user may subscribe to.",
            f"export NATS_NKEY={seed}",
        ]
        if url:
            lines.append(f"export NATS_URL={shlex.quote(url)}")
        return "\n".join(lines) + "\n"
    lines.append(f"export SISAS_NATS_NKEY={seed}")
    if url:
        lines.append(f"export SISAS_NATS_URL={shlex.quote(url)}")
    else:
        lines.append("# export SISAS_NATS_URL=nats://HOST:4222   (the secured server)")
    lines.append("# export SISAS_REPLICAS=1   (a single server; a cluster's default is 3)")
    if role == "orchestrator":
        lines.append(f"export SISAS_SIGNING_KEY={shlex.quote(str(signing))}")
    if role in _TRUSTING:
        lines.append(f"export SISAS_TRUSTED_KEYS={shlex.quote(trusted)}")
    return "\n".join(lines) + "\n"


def init_profile(
    folder: Path, *, upstream: Sequence[str] = (), force: bool = False, url: str | None = None
) -> Profile:
    """Write the secured profile into ``folder`` (created, mode 0700, if missing).

    Without ``force`` nothing is overwritten: :class:`UsageError` names a file that
    exists. With ``force`` the users' keys, auth.conf and env files are replaced and an
    existing signing key is kept (runs already signed with it still verify). The upstream
    role is written only when ``upstream`` subjects are given. Raises :class:`SisasError`
    when the folder cannot be written.
    """
    subjects = [check_upstream_subject(s) for s in upstream]
    roles = [r for r in ROLE_NAMES if r != "upstream" or subjects]
    folder = folder.expanduser().absolute()
    signing = folder / SIGNING_FILE
    targets = [folder / f"{r}.{ext}" for r in roles for ext in ("nk", "env")]
    targets.append(folder / AUTH_FILE)
    if not force:
        for path in [*targets, signing]:
            if path.exists():
                raise UsageError(
                    f"{path} exists: choose another --out folder, or pass --force to replace "
                    "the users' keys (clients holding the old ones are then refused)"
                )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        kept = signing.exists()
        if kept:
            public_signing = signer_from_file(signing).public_key
        else:
            seed = generate_seed()
            _write(signing, seed + b"\n", 0o600)
            public_signing = _public(seed)
        profile = Profile(
            folder=folder,
            users={},
            signing_public_key=public_signing,
            signing_kept=kept,
            upstream=subjects,
        )
        if not kept:
            profile.files.append(("signing", signing))
        for r in roles:
            seed = user_seed()
            profile.users[r] = _public(seed)
            _write(folder / f"{r}.nk", seed + b"\n", 0o600)
            profile.files.append(("seed", folder / f"{r}.nk"))
        for r in roles:
            text = _env(r, folder, url, signing, public_signing)
            _write(folder / f"{r}.env", text.encode(), 0o600)
            profile.files.append(("env", folder / f"{r}.env"))
        header = (
            "# sisas roles, written by `sisas security init`; public keys only.\n"
            "# Copy it next to the nats-server config file and add at its top level:\n"
            "#   include auth.conf\n"
            "# (include paths are relative to the config file's folder)\n"
        )
        _write(folder / AUTH_FILE, (header + auth_conf(profile.users, subjects)).encode(), 0o644)
        profile.files.append(("auth", folder / AUTH_FILE))
    except OSError as exc:
        raise SisasError(
            f"cannot write the security profile in {folder}: {exc.strerror} "
            f"({exc.filename}); choose a folder you can write"
        ) from None
    return profile
