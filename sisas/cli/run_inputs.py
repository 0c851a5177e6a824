"""What ``sisas run`` and ``sisas batch`` send: the input, the ``--set`` configuration
(checked against the pipeline's plan), the run id."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from sisas.errors import UsageError
from sisas.handlers.derive import keyed_run_id
from sisas.signals import Scalar
from sisas.signals.plan import PipelinePlan

__all__ = ["POLICIES", "check_settings", "parse_set", "read_input", "run_id_for"]

POLICIES: Final = frozenset(
    {
        "retries",
        "backoff",
        "backoff_factor",
        "backoff_max",
        "timeout",
        "memory_limit",
        "fatal",
        "side_effects",
        "partial",
    }
)
"""A phase's policies (fields of its ``PhasePlan``) that its code sets and ``--set``
does not change: of them all, ``--set`` changes ``enabled`` only."""


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


def check_settings(config: Mapping[str, Scalar], plan: PipelinePlan) -> None:
    """Refuse ``--set`` keys that sisas reads but would not apply as asked.

    sisas itself reads one key per phase, ``PHASE.enabled`` (true or false); every key
    also reaches the phases as ``ctx.config``, where a pipeline reads its own
    (``filter.min_support``, ``executor.chunk``): those are not checked. Raises
    :class:`UsageError` for ``X.enabled`` when X is no phase, or its value is not a
    boolean, and for ``PHASE.<policy>`` (``clean.retries``): policies are set in the
    code, and the run would go on with the code's value while the log recorded yours.
    """
    phases = [p.name for p in plan.phases]
    listed = ", ".join(phases)
    for key, value in config.items():
        head, _, rest = key.partition(".")
        shown = json.dumps(value) if not isinstance(value, str) else value
        if rest == "enabled":
            if head not in phases:
                raise UsageError(
                    f"--set {key}={shown}: {plan.name} has no phase {head!r} "
                    f"(phases: {listed}); name one of them"
                )
            if not isinstance(value, bool):
                raise UsageError(
                    f"--set {key}={shown}: {head}.enabled takes true or false, "
                    f"e.g. --set {head}.enabled=false"
                )
        elif head in phases and rest in POLICIES:
            raise UsageError(
                f"--set {key}={shown}: {rest} is a policy of phase {head}, set by its code "
                f"(@pipeline.phase({rest}=...)); the one policy --set changes is "
                f"{head}.enabled. Keys of your own reach the phases as ctx.config: name "
                f"them otherwise than a policy ({', '.join(sorted(POLICIES))})"
            )


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


def run_id_for(pipeline: str, idempotency_key: str | None) -> str:
    """The run id a key names (the same key, the same run), else a fresh one."""
    if idempotency_key:
        return keyed_run_id(pipeline, idempotency_key)
    return f"{pipeline[:40]}-{secrets.token_hex(6)}"
