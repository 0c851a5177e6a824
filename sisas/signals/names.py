"""Names that become NATS subject tokens, and the subjects built from them.

Subjects of the log: ``sisas.run.<pipeline>.<run>.c`` holds commits (one decision's
signals in one message, log format 2); ``sisas.run.<pipeline>.<run>.<phase|_>.<kind>``
holds one signal each (format 1, written before commits, read forever); inputs:
``sisas.in.<pipeline>.<run>.<kind>``; work offered to workers:
``sisas.work.<pipeline>.<run>``. A name is 1-64 characters of letters, digits,
``_`` and ``-`` (phase names may also hold ``[n]`` for one item of a fan-out): nothing
that NATS treats as a separator or wildcard.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Final

from sisas.errors import InvalidName

__all__ = [
    "partition_of",
    "run_partition",
    "ARTIFACT_BUCKET",
    "BLOB_BUCKET",
    "COMMIT_TOKEN",
    "CIRCUIT_BUCKET",
    "INPUT_STREAM",
    "IN_PREFIX",
    "LIVE_PREFIX",
    "LOG_PREFIX",
    "LOG_STREAM",
    "PIPELINE_BUCKET",
    "PRESENCE_PREFIX",
    "QUERY_GROUP",
    "QUERY_PREFIX",
    "QUERY_VERBS",
    "RUN_LEVEL",
    "ADMISSION_PIPELINE",
    "ADMIT_PREFIX",
    "ADMIT_STREAM",
    "BACKFILLS_PIPELINE",
    "LIMIT_BUCKET",
    "SCHEDULES_PIPELINE",
    "SCHEDULE_BUCKET",
    "TRIGGERS_PIPELINE",
    "TRIGGER_BUCKET",
    "UPSTREAM_STREAM",
    "WORK_PREFIX",
    "WORK_STREAM",
    "commit_subject",
    "admit_cancel_subject",
    "admit_subject",
    "check_name",
    "check_tags",
    "parse_tag",
    "input_subject",
    "live_subject",
    "log_subject",
    "parse_log_subject",
    "parse_run_subject",
    "run_filter",
    "work_subject",
]

LOG_PREFIX: Final = "sisas.run"
IN_PREFIX: Final = "sisas.in"
WORK_PREFIX: Final = "sisas.work"
COMMIT_TOKEN: Final = "c"
"""The last token of a run's commit subject, ``sisas.run.<pipeline>.<run>.c``."""
RUN_LEVEL: Final = "_"
"""The phase token of signals that belong to the run, not to one phase."""
TRIGGERS_PIPELINE: Final = "triggers"
"""The pipeline name of trigger evaluation chains (one per upstream message)."""
ADMISSION_PIPELINE: Final = "admission"
"""The pipeline name of admission chains (one per limited pipeline: queued, released)."""
BACKFILLS_PIPELINE: Final = "backfills"
"""The pipeline name of backfill chains (one per backfill: its rounds and partitions)."""
SCHEDULES_PIPELINE: Final = "schedules"
"""The pipeline name of schedule chains (one per schedule: its ticks, in order)."""

# Streams, buckets and subjects beside the log's: every name on the wire is here.
LOG_STREAM: Final = "SISAS_LOG"
"""The signal log: ``sisas.run.>``, immutable, hash-chained."""
INPUT_STREAM: Final = "SISAS_IN"
"""Commands and worker reports: ``sisas.in.>``."""
WORK_STREAM: Final = "SISAS_WORK"
"""Work offered to workers: ``sisas.work.>``, a work queue (each item taken once)."""
UPSTREAM_STREAM: Final = "SISAS_UPSTREAM"
"""Messages from upstream systems that trigger rules read."""
ARTIFACT_BUCKET: Final = "sisas-artifacts"
"""Object store: run inputs and phase outputs by digest."""
BLOB_BUCKET: Final = "sisas-blobs"
"""KV bucket for artifacts up to INLINE_MAX bytes (one publish / one direct get each)."""
PIPELINE_BUCKET: Final = "sisas-pipelines"
"""KV: each pipeline's plan, as its workers registered it."""
CIRCUIT_BUCKET: Final = "sisas-circuits"
"""KV: circuit breaker states by pipeline."""
TRIGGER_BUCKET: Final = "sisas-triggers"
"""KV: each evaluated upstream message and the runs it started (exactly once)."""
ADMIT_PREFIX: Final = "sisas.admit"
"""Requests of runs of a pipeline with a concurrency limit: ``sisas.admit.<pipeline>.<run>``."""
ADMIT_STREAM: Final = "SISAS_ADMIT"
"""Those requests, kept until the admission service releases them to ``SISAS_IN``."""
LIMIT_BUCKET: Final = "sisas-limits"
"""KV: each pipeline's concurrency limit (``max_concurrent_runs``)."""
SCHEDULE_BUCKET: Final = "sisas-schedules"
"""KV: the schedules an operator paused (``pause.<schedule>``)."""
PRESENCE_PREFIX: Final = "sisas.presence"
"""Request/reply: live workers and orchestrators answer."""
LIVE_PREFIX: Final = "sisas.live"
"""Core NATS, not persisted: progress ticks of running phases."""
QUERY_PREFIX: Final = "sisas.query"
"""Request/reply: the query service answers ``sisas.query.<verb>``."""
QUERY_GROUP: Final = "sisas-projectors"
"""The queue group projectors answer queries in."""
QUERY_VERBS: Final = (
    "runs",
    "show",
    "manifest",
    "stats",
    "states",
    "tables",
    "status",
    "digest",
    "rebuild",
)
"""What the query service answers."""


def live_subject(run_id: str) -> str:
    """The core NATS subject progress ticks of ``run_id`` go to (not persisted)."""
    return f"{LIVE_PREFIX}.{run_id}"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it can be a subject token; raise :class:`InvalidName` if not."""
    if not _NAME.match(value):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


_TAG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$")
TAG_VALUE_MAX: Final = 200


def check_tags(tags: Mapping[str, str], what: str = "tag") -> dict[str, str]:
    """``tags`` as a plain dict if every key and value can be a tag; raise
    :class:`InvalidName` naming the first that cannot (keys: 1-64 letters, digits, '_',
    '.', '-' or '/'; values: strings of 1 to 200 characters, no control characters)."""
    for key, value in tags.items():
        if not isinstance(key, str) or not _TAG_KEY.match(key):
            raise InvalidName(
                f"invalid {what} key {key!r}: use 1-64 letters, digits, '_', '.', '-' or '/', "
                "starting with a letter or digit (--tag team=data)"
            )
        if not isinstance(value, str):
            raise InvalidName(f"{what} {key} is {value!r}: a tag's value is a string")
        if not value:
            raise InvalidName(f"{what} {key} has an empty value: give it one (--tag {key}=data)")
        if len(value) > TAG_VALUE_MAX or any(ord(c) < 32 for c in value):
            raise InvalidName(
                f"invalid {what} {key}: its value must be at most {TAG_VALUE_MAX} characters, "
                "without control characters"
            )
    return dict(tags)


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(key, value)``; raise :class:`InvalidName` saying the form."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidName(f"--tag {text!r} is not KEY=VALUE: write it as --tag team=data")
    check_tags({key: value})
    return key, value


def admit_subject(pipeline: str, run_id: str) -> str:
    """The subject a request of a run of a limited pipeline waits on for admission."""
    return f"{ADMIT_PREFIX}.{pipeline}.{run_id}"


def admit_cancel_subject(pipeline: str, run_id: str) -> str:
    """The subject a cancellation of a run waiting for admission is sent on."""
    return f"{ADMIT_PREFIX}.{pipeline}.{run_id}.cancel"


def log_subject(pipeline: str, run_id: str, phase: str, kind: str) -> str:
    """The subject a signal of ``kind`` for ``phase`` ('' for the run) is stored on."""
    return f"{LOG_PREFIX}.{pipeline}.{run_id}.{phase or RUN_LEVEL}.{kind}"


def commit_subject(pipeline: str, run_id: str) -> str:
    """The subject a run's commits (its decisions, several signals each) are stored on."""
    return f"{LOG_PREFIX}.{pipeline}.{run_id}.{COMMIT_TOKEN}"


def work_subject(pipeline: str, run_id: str) -> str:
    """The subject work for an attempt of ``run_id`` is offered to workers on."""
    return f"{WORK_PREFIX}.{pipeline}.{run_id}"


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


def partition_of(subject: str, partitions: int) -> int:
    """Which of ``partitions`` shares of the log a message on ``subject`` falls in: by a
    hash of its run id (a run's messages all fall in one), 0 for one on no run's subject."""
    parsed = parse_run_subject(subject)
    return 0 if parsed is None else run_partition(parsed[1], partitions)


def run_partition(run_id: str, partitions: int) -> int:
    """Which of ``partitions`` shares ``run_id`` falls in (crc32: the same everywhere)."""
    return zlib.crc32(run_id.encode()) % partitions if partitions > 1 else 0


def parse_run_subject(subject: str) -> tuple[str, str] | None:
    """``(pipeline, run_id)`` of a log subject of either format, or None."""
    parts = subject.split(".")
    shaped = (len(parts) == 5 and parts[4] == COMMIT_TOKEN) or len(parts) == 6
    if shaped and parts[0] == "sisas" and parts[1] == "run":
        return parts[2], parts[3]
    return None
