"""Settings from ``SISAS_*`` environment variables.

| variable | meaning | default |
|---|---|---|
| ``SISAS_HOME`` | data folder: embedded store, projections, server.json | nearest ``.sisas`` up |
| ``SISAS_NATS_URL`` | NATS server or cluster (comma-separated URLs); nothing spawned | embedded |
| ``SISAS_NATS_CREDS`` | credentials file (JWT + nkey seed) | none |
| ``SISAS_NATS_NKEY`` | nkey seed file of a NATS user (``sisas security init`` writes them) | none |
| ``SISAS_NATS_USER`` / ``SISAS_NATS_PASSWORD`` | user and password | none |
| ``SISAS_NATS_TOKEN`` | auth token | none |
| ``SISAS_NATS_TLS_CA`` / ``_CERT`` / ``_KEY`` | TLS trust root and client certificate | none |
| ``SISAS_REPLICAS`` | stream replicas | 1 embedded, 3 with ``SISAS_NATS_URL`` |
| ``SISAS_PORT`` | client port of the embedded server (0: any free port) | 0 |
| ``SISAS_SYNC`` | embedded JetStream ``sync_interval`` (``always`` or a duration) | ``always`` |
| ``SISAS_SIGNING_KEY`` | nkey seed file: the orchestrator signs every signal it appends | none |
| ``SISAS_TRUSTED_KEYS`` | public keys (space-separated): workers run only what they signed | none |
| ``SISAS_TIMEOUT`` | seconds to wait for the server on connect and each request | 5 |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sisas.errors import UsageError
from sisas.signals.signing import public_key_bytes

__all__ = ["Settings", "find_home"]


def find_home(start: Path | None = None) -> Path:
    """The data folder when ``SISAS_HOME`` is unset: ``.sisas`` in ``start`` (the current
    folder) or in the nearest parent holding one, as git finds ``.git``, so a command
    run from a subfolder of a project sees that project's server and runs; ``.sisas``
    here (created on first use) when no parent has one."""
    here = Path.cwd() if start is None else start
    found = next((f for f in (here, *here.parents) if (f / ".sisas").is_dir()), here)
    if start is None and found == here:
        return Path(".sisas")  # relative, as before: messages name ./.sisas
    return found / ".sisas"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where sisas keeps its data and how it reaches NATS. Build with :meth:`from_env`."""

    home: Path = field(default_factory=lambda: Path(".sisas"))
    nats_url: str | None = None
    creds: Path | None = None
    nkey: Path | None = None
    nkey_seed: str | None = field(default=None, repr=False)
    """An nkey user seed as text, instead of ``nkey``'s file: what an operator gives the
    dashboard's sign-in (never read from the environment, never written anywhere)."""
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    replicas: int = 1
    port: int = 0
    sync: str = "always"
    timeout: float = 5.0
    signing_key: Path | None = None
    trusted_keys: frozenset[str] = frozenset()
    """Public nkeys of the orchestrators' signing keys. Non-empty: a worker executes only
    ``phase_scheduled`` signals signed by one of them (:mod:`sisas.services.worker`)."""

    @property
    def embedded(self) -> bool:
        """True when sisas runs its own nats-server (no ``SISAS_NATS_URL``)."""
        return self.nats_url is None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default ``os.environ``).

        Raises :class:`UsageError` naming the variable when a value is invalid or a
        file it names does not exist.
        """
        env = os.environ if env is None else env
        url = env.get("SISAS_NATS_URL") or None
        replicas = _int(env, "SISAS_REPLICAS", 3 if url else 1, 1, 5)
        settings = cls(
            home=Path(env["SISAS_HOME"]).expanduser() if env.get("SISAS_HOME") else find_home(),
            nats_url=url,
            creds=_file(env, "SISAS_NATS_CREDS"),
            nkey=_file(env, "SISAS_NATS_NKEY"),
            user=env.get("SISAS_NATS_USER") or None,
            password=env.get("SISAS_NATS_PASSWORD") or None,
            token=env.get("SISAS_NATS_TOKEN") or None,
            tls_ca=_file(env, "SISAS_NATS_TLS_CA"),
            tls_cert=_file(env, "SISAS_NATS_TLS_CERT"),
            tls_key=_file(env, "SISAS_NATS_TLS_KEY"),
            replicas=replicas,
            port=_int(env, "SISAS_PORT", 0, 0, 65535),
            sync=env.get("SISAS_SYNC") or "always",
            timeout=_float(env, "SISAS_TIMEOUT", 5.0),
            signing_key=_file(env, "SISAS_SIGNING_KEY"),
            trusted_keys=_public_keys(env, "SISAS_TRUSTED_KEYS"),
        )
        if settings.creds and settings.nkey:
            raise UsageError(
                "SISAS_NATS_CREDS and SISAS_NATS_NKEY are both set: a connection uses one; "
                "unset the other"
            )
        if settings.tls_cert and not settings.tls_key:
            raise UsageError("SISAS_NATS_TLS_CERT is set without SISAS_NATS_TLS_KEY: set both")
        if not re.fullmatch(r"always|\d+(ms|s|m|h)", settings.sync):
            raise UsageError(
                f"SISAS_SYNC={settings.sync!r} is invalid: use 'always' or a duration like '1s'"
            )
        return settings


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise UsageError(f"{name}={value} is out of range: use {lo}..{hi}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UsageError(f"{name}={value} must be positive")
    return value


def _public_keys(env: Mapping[str, str], name: str) -> frozenset[str]:
    keys = frozenset((env.get(name) or "").split())
    for key in sorted(keys):
        if key.startswith("S"):  # never echo a secret, not even its first characters
            raise UsageError(
                f"{name} holds an nkey seed, which is a secret: list public keys instead "
                "(`sisas keys public signing.nk` prints one) and keep seeds on the "
                "orchestrators"
            )
        try:
            public_key_bytes(key)
        except ValueError as exc:
            raise UsageError(
                f"{name}: {exc}: list the public keys of the orchestrators' signing keys "
                "(`sisas keys public signing.nk`), separated by spaces"
            ) from None
    return keys


def _file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise UsageError(f"{name} names {path}, which is not a file: fix the path or unset it")
    return path
