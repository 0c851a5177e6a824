"""Inputs: what the CLI, triggers and workers send the orchestrator on ``sisas.in.>``.

Inputs are not signals: they are requests and reports that the orchestrator turns into
signals. Each carries the wall-clock ``at`` of its sender, which the orchestrator copies
into the signals it decides (the pure core never reads the clock), and a deterministic
``id`` used as its Nats-Msg-Id and as the ``causation`` of those signals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, TypeAlias

import msgspec

from sisas.errors import MalformedSignal
from sisas.signals.kinds import ErrorInfo, Resources, Scalar, Violation

__all__ = [
    "INPUT_KINDS",
    "CancelRun",
    "ContractResult",
    "Input",
    "InvariantResult",
    "PhaseReport",
    "Reuse",
    "StartRun",
    "decode_input",
    "encode_input",
]

UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
_OPTS: Final = {
    "frozen": True,
    "kw_only": True,
    "omit_defaults": True,
    "forbid_unknown_fields": True,
    "tag_field": "kind",
}


class Reuse(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A verified output of an earlier run, reused by a resumed run."""

    output_digest: str
    artifact: str = ""
    items: list[str] = []
    item_count: int | None = None
    """The length of a list output (a fan-out downstream maps over its items)."""


class StartRun(msgspec.Struct, tag="start_run", **_OPTS):
    """Start ``run_id`` of ``pipeline``. Sending it twice starts one run."""

    id: str
    pipeline: str
    run_id: str
    at: UtcTime
    seed: int = 0
    input_digest: str = ""
    input_artifact: str = ""
    config: dict[str, Scalar] = {}
    requested_by: str = ""
    idempotency_key: str = ""
    resume_of: str = ""
    resume_from_phase: str = ""
    reuse: dict[str, Reuse] = {}
    batch_id: str = ""
    tags: dict[str, str] = {}
    priority: int = 0
    """Under a concurrency limit, higher goes first (then the order requests came in)."""
    cancelled: str = ""
    """Why the run was cancelled while it waited for a slot ("" when it was not): the
    orchestrator records its ``run_requested`` and then ``run_cancelled``, and starts
    nothing."""
    cancelled_by: str = ""


class CancelRun(msgspec.Struct, tag="cancel_run", **_OPTS):
    """Cancel a run that has not ended."""

    id: str
    pipeline: str
    run_id: str
    at: UtcTime
    reason: str = ""
    requested_by: str = ""


class ContractResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A contract check done by a worker."""

    contract: str
    boundary: Literal["entry", "exit", "bridge"]
    passed: bool
    violations: list[Violation] = []


class InvariantResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An invariant evaluated by a worker."""

    invariant: str
    passed: bool
    description: str = ""
    observed: Scalar = None
    expected: Scalar = None


class PhaseReport(msgspec.Struct, tag="phase_report", **_OPTS):
    """A worker's report on one attempt of a phase (or one item of a fan-out)."""

    id: str
    pipeline: str
    run_id: str
    at: UtcTime
    phase: str
    attempt: int
    status: Literal["started", "completed", "failed", "timed_out"]
    worker: str = ""
    environment: str = ""
    """The artifact digest of the worker's environment record (see ``phase_started``)."""
    secrets: dict[str, str] = {}
    """Which secrets the attempt read and a keyed digest of each (see ``phase_started``)."""
    item: int | None = None
    output_digest: str = ""
    artifact: str = ""
    item_count: int | None = None
    duration: float = 0.0
    resources: Resources = Resources()
    error: ErrorInfo | None = None
    contracts: list[ContractResult] = []
    invariants: list[InvariantResult] = []
    log: str = ""
    """The artifact digest of the attempt's log (see ``phase_completed``)."""
    log_lines: int = 0
    log_dropped: int = 0


Input: TypeAlias = StartRun | CancelRun | PhaseReport
INPUT_KINDS: Final = ("start_run", "cancel_run", "phase_report")

_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final[msgspec.json.Decoder[Input]] = msgspec.json.Decoder(Input)


def encode_input(value: Input) -> bytes:
    return _ENCODER.encode(value)


def decode_input(data: bytes) -> Input:
    """Decode an input. Raises :class:`MalformedSignal` saying what is wrong."""
    try:
        return _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedSignal(f"not a valid sisas input: {exc}") from None
    except (msgspec.DecodeError, ValueError) as exc:
        raise MalformedSignal(f"not JSON: {exc}") from None
