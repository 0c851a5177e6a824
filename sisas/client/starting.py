"""What is checked before a run is requested: its id, its configuration against the
pipeline's plan, and, for an idempotency key that names a run already, that the request
is the same one (a key names one run, as a workflow id does in Temporal)."""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Mapping
from typing import Final

from sisas.errors import UsageError
from sisas.handlers.derive import keyed_run_id
from sisas.signals import RunRequested, Scalar
from sisas.signals.plan import PipelinePlan

__all__ = ["POLICIES", "check_settings", "refuse_another_run", "run_id_for"]

_SECRET_WORDS: Final = frozenset(
    {"password", "passwd", "pass", "secret", "token", "credential", "credentials", "apikey"}
)
_SECRET_PAIRS: Final = frozenset({("api", "key"), ("private", "key"), ("access", "key")})


def _names_a_secret(key: str) -> bool:
    """Whether a configuration key names a secret (``db.password``, ``api_key``,
    ``auth.token``), by its whole words (``max_tokens`` does not)."""
    words = [w for w in re.split(r"[._\-]+", key.lower()) if w]
    return bool(_SECRET_WORDS & set(words)) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    )


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


def check_settings(
    config: Mapping[str, Scalar], plan: PipelinePlan, *, how: str = "--set "
) -> None:
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
    for key in config:
        if _names_a_secret(key):
            name = key.rpartition(".")[2].lower().replace("-", "_")
            raise UsageError(
                f"{how}{key}=…: {key} looks like a secret, and a run's configuration is "
                f"recorded in the immutable log for ever (the value was not sent). Declare "
                f'it on the phase that reads it (@pipeline.phase(secrets=["{name}"])), give '
                f"the workers its value as SISAS_SECRET_{name.upper()} (or a file {name} in "
                f'SISAS_SECRETS_DIR), and read it with ctx.secret("{name}")'
            )
    for key, value in config.items():
        head, _, rest = key.partition(".")
        shown = json.dumps(value) if not isinstance(value, str) else value
        if rest == "enabled":
            if head not in phases:
                raise UsageError(
                    f"{how}{key}={shown}: {plan.name} has no phase {head!r} "
                    f"(phases: {listed}); name one of them"
                )
            if not isinstance(value, bool):
                raise UsageError(
                    f"{how}{key}={shown}: {head}.enabled takes true or false, "
                    f"e.g. --set {head}.enabled=false"
                )
        elif head in phases and rest in POLICIES:
            raise UsageError(
                f"{how}{key}={shown}: {rest} is a policy of phase {head}, set by its code "
                f"(@pipeline.phase({rest}=...)); the one policy --set changes is "
                f"{head}.enabled. Keys of your own reach the phases as ctx.config: name "
                f"them otherwise than a policy ({', '.join(sorted(POLICIES))})"
            )


def refuse_another_run(
    run_id: str,
    key: str,
    existing: RunRequested,
    digest: str,
    input_given: bool,
    config: Mapping[str, Scalar],
) -> None:
    """Raise :class:`UsageError` when a request asks the run ``key`` names already for
    another input or configuration (a key names one run, as a workflow id does in
    Temporal: "workflow already started")."""
    conflicts = []
    if input_given and digest != existing.input_digest:
        conflicts.append(f"input {existing.input_digest[:19]}… (yours: {digest[:19]}…)")
    if config and config != existing.config:
        conflicts.append(
            f"configuration {json.dumps(existing.config)} (yours: {json.dumps(config)})"
        )
    if conflicts:
        raise UsageError(
            f"idempotency key {key!r} names run {run_id}, started with another "
            f"{' and '.join(conflicts)}: a key names one run; pass a new --idempotency-key "
            "to start another, or the same arguments to follow this one"
        )


def run_id_for(pipeline: str, idempotency_key: str | None) -> str:
    """The run id a key names (the same key, the same run), else a fresh one."""
    if idempotency_key:
        return keyed_run_id(pipeline, idempotency_key)
    return f"{pipeline[:40]}-{secrets.token_hex(6)}"
