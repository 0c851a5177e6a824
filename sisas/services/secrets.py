"""Secrets a phase declares, resolved by the worker that runs it.

A phase names the secrets it reads (``@pipeline.phase(secrets=["db_password"])``) and
reads them with ``ctx.secret("db_password")``. Values never travel through the bus and
never enter the log: each worker takes them from where it runs, in this order:

- the environment variable ``SISAS_SECRET_<NAME>`` (the name upper-cased, ``-`` as ``_``);
- a file named ``<name>`` in the folder ``SISAS_SECRETS_DIR`` (a mounted Kubernetes or
  Docker secret; one trailing newline is dropped).

The log records which secrets an attempt used and, when the workers share a key in
``SISAS_SECRETS_KEY``, a keyed digest of each value (``hmac-sha256:…``): an auditor sees
that a secret changed between two runs (its digest did) without anyone being able to
test guesses of the value against the log. Without the key only the names are recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from sisas.errors import UsageError

__all__ = ["MissingSecret", "resolve_secrets", "secret_digests"]


class MissingSecret(UsageError):
    """A declared secret is not available to this worker."""


def _variable(name: str) -> str:
    return "SISAS_SECRET_" + name.upper().replace("-", "_")


def resolve_secrets(
    names: list[str], env: Mapping[str, str] | None = None, *, worker: str = "this worker"
) -> dict[str, str]:
    """The value of each secret in ``names``; raises :class:`MissingSecret` naming the
    first one this worker cannot find and where to put it."""
    env = os.environ if env is None else env
    folder = env.get("SISAS_SECRETS_DIR")
    values: dict[str, str] = {}
    for name in names:
        value = env.get(_variable(name))
        if value is None and folder:
            try:
                value = Path(folder, name).read_text().removesuffix("\n")
            except OSError:
                value = None
        if value is None:
            where = f" or a file {name} in {folder}" if folder else " (or SISAS_SECRETS_DIR)"
            raise MissingSecret(
                f"secret {name!r} is not set on {worker}: set {_variable(name)}{where} "
                "where the worker runs, then retry the run"
            )
        values[name] = value
    return values


def secret_digests(
    values: Mapping[str, str], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What the log records of each secret: a keyed digest of its value when
    ``SISAS_SECRETS_KEY`` is set, else "" (the name alone)."""
    env = os.environ if env is None else env
    key = env.get("SISAS_SECRETS_KEY", "").encode()
    out = {}
    for name, value in sorted(values.items()):
        if key:
            mac = hmac.new(key, f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()
            out[name] = f"hmac-sha256:{mac}"
        else:
            out[name] = ""
    return out
