"""What ``sisas run`` and ``sisas batch`` read from the command line: the input and the
``--set`` configuration (checked against the plan by :mod:`sisas.client.starting`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sisas.errors import UsageError
from sisas.signals import Scalar

__all__ = ["parse_set", "read_input"]


def parse_set(values: tuple[str, ...]) -> dict[str, Scalar]:
    """``phase.enabled=false`` -> ``{"phase.enabled": False}`` (JSON scalars, else text)."""
    config: dict[str, Scalar] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: use KEY=VALUE, e.g. --set publish.enabled=true")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, dict | list):
            raise UsageError(f"--set {item!r}: values must be numbers, true/false, null or text")
        config[key] = value
    return config


def read_input(source: str | None) -> bytes:
    """The bytes of ``source`` (a file, or ``-`` for stdin; None: ``null``), checked to be
    JSON; raises :class:`UsageError` naming the fix."""
    if source is None:
        return b"null"
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read input {source}: {exc.strerror}; check the path") from None
    try:
        json.loads(data)
    except ValueError as exc:
        raise UsageError(
            f"input {source} is not JSON ({exc}); pass a JSON file or - for standard input"
        ) from None
    return data
