"""Names that become NATS subject tokens, and the subjects built from them.

Subjects of the log: ``sisas.run.<pipeline>.<run>.<phase|_>.<kind>``; inputs:
``sisas.in.<pipeline>.<run>.<kind>``. A name is 1-64 characters of letters, digits,
``_`` and ``-`` (phase names may also hold ``[n]`` for one item of a fan-out): nothing
that NATS treats as a separator or wildcard.
"""

from __future__ import annotations

import re
from typing import Final

from sisas.errors import InvalidName

__all__ = [
    "IN_PREFIX",
    "LOG_PREFIX",
    "RUN_LEVEL",
    "TRIGGERS_PIPELINE",
    "check_name",
    "input_subject",
    "log_subject",
    "parse_log_subject",
    "run_filter",
]

LOG_PREFIX: Final = "sisas.run"
IN_PREFIX: Final = "sisas.in"
RUN_LEVEL: Final = "_"
TRIGGERS_PIPELINE: Final = "triggers"
"""The pipeline name of trigger evaluation chains (one per upstream message)."""
"""The phase token of signals that belong to the run, not to one phase."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it can be a subject token; raise :class:`InvalidName` if not."""
    if not _NAME.match(value):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def log_subject(pipeline: str, run_id: str, phase: str, kind: str) -> str:
    """The subject a signal of ``kind`` for ``phase`` ('' for the run) is stored on."""
    return f"{LOG_PREFIX}.{pipeline}.{run_id}.{phase or RUN_LEVEL}.{kind}"


def run_filter(run_id: str, pipeline: str = "*") -> str:
    """A subject filter covering every signal of one run."""
    return f"{LOG_PREFIX}.{pipeline}.{run_id}.>"


def input_subject(pipeline: str, run_id: str, kind: str) -> str:
    """The subject of a command or worker report for a run."""
    return f"{IN_PREFIX}.{pipeline}.{run_id}.{kind}"


def parse_log_subject(subject: str) -> tuple[str, str, str, str] | None:
    """``(pipeline, run_id, phase, kind)`` of a log subject, or None if it is not one."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != "sisas" or parts[1] != "run":
        return None
    phase = "" if parts[4] == RUN_LEVEL else parts[4]
    return parts[2], parts[3], phase, parts[5]
