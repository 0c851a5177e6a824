"""Signal bodies: one frozen msgspec Struct per kind, tagged by ``kind``.

The tag is the kind's stable name on the wire and in subjects. Evolving a kind means
adding fields with defaults (old signals keep their bytes and hashes because defaults
are omitted from the encoding); a field's type never changes, a changed meaning is a
new kind.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, TypeAlias, get_args

import msgspec

from sisas.signals.plan import PipelinePlan

__all__ = [
    "BODY_TYPES",
    "ENDING_KINDS",
    "ERROR_KINDS",
    "KINDS",
    "BackfillFinished",
    "BackfillRequested",
    "Body",
    "CircuitClosed",
    "CircuitOpened",
    "ContractChecked",
    "ErrorInfo",
    "ErrorKind",
    "InvariantChecked",
    "PartitionLaunched",
    "PartitionSkipped",
    "PhaseCompleted",
    "PhaseFailed",
    "PhaseRetryScheduled",
    "PhaseScheduled",
    "PhaseSkipped",
    "PhaseStarted",
    "PhaseTimedOut",
    "Resources",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunQueued",
    "RunReleased",
    "RunRequested",
    "RunStarted",
    "RunWithdrawn",
    "Scalar",
    "ScheduleTicked",
    "Violation",
]

Scalar: TypeAlias = str | int | float | bool | None
"""A configuration or observed value: JSON scalars only, so every reader can decode it."""

Digest = Annotated[str, msgspec.Meta(pattern=r"^(|sha256:[0-9a-f]{64})$")]
"""``sha256:<hex>`` or empty when there is none."""

ErrorKind = Literal[
    "HardFailure",
    "NonFatal",
    "ContractViolation",
    "InvariantViolation",
    "Timeout",
    "ResourceExhausted",
    "PhaseNotImplemented",
    "WorkerLost",
    "Cancelled",
]
ERROR_KINDS: Final[tuple[str, ...]] = get_args(ErrorKind)

_OPTS: Final = {
    "frozen": True,
    "kw_only": True,
    "omit_defaults": True,
    "forbid_unknown_fields": True,
    "tag_field": "kind",
    "gc": False,
}


class ErrorInfo(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """What went wrong: ``kind`` is one of :data:`ErrorKind`."""

    kind: ErrorKind
    message: str
    retryable: bool = False
    detail: str = ""


class Violation(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """One contract violation at a field path such as ``clusters[2].weight``."""

    path: str
    message: str
    type: str = ""


class Resources(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """Resources a phase attempt used, as measured by the worker."""

    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0


class RunRequested(msgspec.Struct, tag="run_requested", **_OPTS):
    """Someone asked for a run: the command, as the orchestrator accepted it."""

    pipeline_version: str = ""
    input_digest: Digest = ""
    seed: int | None = None
    config: dict[str, Scalar] = {}
    requested_by: str = ""
    idempotency_key: str = ""
    resume_of: str = ""
    resume_from_phase: str = ""
    batch_id: str = ""
    tags: dict[str, str] = {}
    """Labels the requester gave the run (``--tag k=v``): filter runs by them."""


class RunStarted(msgspec.Struct, tag="run_started", **_OPTS):
    """The run's plan is fixed: code version and fingerprint, seed, input, config."""

    pipeline_version: str
    fingerprint: str
    seed: int
    input_digest: Digest = ""
    config: dict[str, Scalar] = {}
    phases: list[str] = []
    resume_of: str = ""
    batch_id: str = ""
    plan: PipelinePlan | None = None


class PhaseScheduled(msgspec.Struct, tag="phase_scheduled", **_OPTS):
    """A phase (or one item of a fanned-out phase) is ready for a worker."""

    inputs: dict[str, str] = {}
    gathered: dict[str, list[str]] = {}
    item: int | None = None
    items: int | None = None
    seed: int = 0
    delay: float = 0.0
    timeout: float | None = None


class PhaseStarted(msgspec.Struct, tag="phase_started", **_OPTS):
    """A worker took the phase. ``environment``: the artifact digest of the environment
    that worker runs the pipeline in (:class:`sisas.signals.plan.Environment`, JSON), so
    each attempt names the versions it ran under, even in a fleet of mixed workers."""

    worker: str = ""
    item: int | None = None
    environment: Digest = ""
    secrets: dict[str, str] = {}
    """The secrets the attempt read, by name: a keyed digest of each value
    (``hmac-sha256:…``, when the workers share ``SISAS_SECRETS_KEY``) or "". Never a value."""


class PhaseCompleted(msgspec.Struct, tag="phase_completed", **_OPTS):
    """The phase produced its output; ``output_digest`` is its semantic digest."""

    output_digest: Digest
    artifact: str = ""
    duration: float = 0.0
    resources: Resources = Resources()
    item: int | None = None
    worker: str = ""
    item_count: int | None = None
    log: str = ""
    """The artifact digest of the attempt's log (``sisas logs``); "" when it wrote none."""
    log_lines: int = 0
    """Lines the attempt wrote in all."""
    log_dropped: int = 0
    """Lines not kept (an attempt's log keeps its first and last 500 lines)."""


class PhaseFailed(msgspec.Struct, tag="phase_failed", **_OPTS):
    """The attempt failed; ``error.retryable`` says whether another may follow.

    When the phase produced an output that failed its exit contract or an invariant, the
    output is quarantined: stored as ``quarantined_artifact`` (its semantic digest in
    ``quarantined``) for inspection, and never given to a downstream phase.
    """

    error: ErrorInfo
    duration: float = 0.0
    item: int | None = None
    worker: str = ""
    quarantined: Digest = ""
    quarantined_artifact: str = ""
    log: str = ""
    """The artifact digest of the attempt's log, its traceback last when it raised."""
    log_lines: int = 0
    log_dropped: int = 0


class PhaseRetryScheduled(msgspec.Struct, tag="phase_retry_scheduled", **_OPTS):
    """Another attempt will run after ``delay`` seconds (backoff drawn from the run seed)."""

    next_attempt: int
    delay: float
    reason: str = ""
    item: int | None = None


class PhaseSkipped(msgspec.Struct, tag="phase_skipped", **_OPTS):
    """The phase will not run in this run, and why: ``disabled`` (``enabled=False``, or a
    side-effects phase not switched on), ``resumed`` (its output is reused),
    ``upstream_disabled`` (a phase it needs was switched off: nothing failed) or
    ``upstream_failed`` (a phase it needs failed or timed out). A resumed phase carries
    what it reuses: the output's digest and artifact, a fan-out's items, and the length
    of a list output (``reused_item_count``: a fan-out downstream maps over it)."""

    reason: Literal["disabled", "resumed", "upstream_disabled", "upstream_failed"]
    detail: str = ""
    reused_digest: Digest = ""
    reused_artifact: str = ""
    reused_items: list[str] = []
    reused_item_count: int | None = None


class PhaseTimedOut(msgspec.Struct, tag="phase_timed_out", **_OPTS):
    """The attempt exceeded its timeout of ``timeout`` seconds."""

    timeout: float
    item: int | None = None
    log: str = ""
    """The artifact digest of what the attempt logged before it was stopped."""
    log_lines: int = 0
    log_dropped: int = 0


class ContractChecked(msgspec.Struct, tag="contract_checked", **_OPTS):
    """A pydantic contract was checked at a phase boundary."""

    contract: str
    boundary: Literal["entry", "exit", "bridge"]
    passed: bool
    violations: list[Violation] = []
    item: int | None = None


class InvariantChecked(msgspec.Struct, tag="invariant_checked", **_OPTS):
    """A named invariant (such as ``INV-7.1``) was evaluated on a phase output."""

    invariant: str
    passed: bool
    description: str = ""
    observed: Scalar = None
    expected: Scalar = None
    item: int | None = None


class CircuitOpened(msgspec.Struct, tag="circuit_opened", **_OPTS):
    """Repeated failures opened a circuit; work in ``scope`` is held back."""

    scope: str
    reason: str = ""
    failures: int = 0


class CircuitClosed(msgspec.Struct, tag="circuit_closed", **_OPTS):
    """The circuit for ``scope`` closed again."""

    scope: str
    reason: str = ""


class RunCompleted(msgspec.Struct, tag="run_completed", **_OPTS):
    """The run ended well; ``fingerprint`` digests every phase's output digest in order."""

    fingerprint: str
    outputs: dict[str, str] = {}
    duration: float = 0.0


class RunFailed(msgspec.Struct, tag="run_failed", **_OPTS):
    """The run ended because a fatal phase failed or the run could not start."""

    error: ErrorInfo
    failed_phase: str = ""
    duration: float = 0.0


class RunCancelled(msgspec.Struct, tag="run_cancelled", **_OPTS):
    """Somebody cancelled the run."""

    reason: str = ""
    requested_by: str = ""


class TriggerResult(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """One trigger rule's verdict on an upstream message."""

    trigger: str
    matched: bool
    reason: str
    run_id: str = ""


class TriggerEvaluated(msgspec.Struct, tag="trigger_evaluated", **_OPTS):
    """An upstream message was evaluated against the trigger rules: each rule's verdict.

    Recorded in a chain of its own per upstream message (pipeline ``triggers``), so a
    redelivery or duplicate appends another evaluation with ``duplicate`` set, naming the
    runs the first one started; ``error`` says why a message could not be read.
    """

    subject: str
    message_id: str
    results: list[TriggerResult] = []
    duplicate: bool = False
    error: str = ""


class ScheduleTicked(msgspec.Struct, tag="schedule_ticked", **_OPTS):
    """A schedule's tick was decided: a run started, queued or released, or the tick skipped.

    Recorded in one chain per schedule (pipeline ``schedules``), in tick order, by
    whichever scheduler appends first: the record is the decision, and every scheduler
    acts on the recorded one. Times are ISO 8601 in the schedule's time zone, passed in by
    the scheduler (a shell); ``last_tick``, ``running`` and ``queued`` are the schedule's
    state after this decision, so the chain's last signal alone resumes it.
    """

    schedule: str
    pipeline: str
    tick: str
    action: Literal["started", "skipped", "queued", "released"]
    reason: str
    run_id: str = ""
    window_start: str = ""
    window_end: str = ""
    catch_up: bool = False
    """The tick was missed while no scheduler ran and is run by the catch-up policy."""
    also_missed: int = 0
    """Missed ticks before this one not recorded one by one (past the per-pass cap)."""
    last_tick: str = ""
    running: str = ""
    queued: list[str] = []


class RunQueued(msgspec.Struct, tag="run_queued", **_OPTS):
    """A run of a pipeline at its concurrency limit waits for a slot.

    Recorded in the pipeline's admission chain (pipeline ``admission``, run id
    ``adm-PIPELINE``), or for a run carrying a tag with a limit in the tags' chain
    (``adm--tags``), by the admission service, before the run has a log of its own;
    ``request_seq`` is where its request waits in ``SISAS_ADMIT``.
    """

    run_id: str
    pipeline: str
    reason: str
    priority: int = 0
    request_seq: int = 0
    waits_for: str = ""
    """The limit it waits for: ``pipeline NAME`` or ``tag k=v`` ("" in chains written
    before tags had limits: its pipeline's)."""
    tag_limits: list[str] = []
    """In the tags' admission chain (``adm--tags``): the limited tags (``k=v``) the run
    carries, each of whose limits it counts against."""


class RunReleased(msgspec.Struct, tag="run_released", **_OPTS):
    """A run of a limited pipeline got a slot: its request goes on to the orchestrator.

    ``ended``: the runs seen ended since the chain's previous decision (the slots they
    freed), so the chain alone says which runs hold a slot.
    """

    run_id: str
    pipeline: str
    reason: str
    waited: bool = False
    """It was queued first (else it was admitted at once)."""
    request_seq: int = 0
    ended: list[str] = []
    tag_limits: list[str] = []
    """In the tags' admission chain: the limited tags (``k=v``) whose slots it holds."""


class BackfillRequested(msgspec.Struct, tag="backfill_requested", **_OPTS):
    """A round of a backfill was asked for: one run per partition, at most
    ``max_concurrent`` at once.

    Recorded first in the backfill's chain (pipeline ``backfills``, run id the backfill
    id ``bf-…``) by the command or client that drives it. A backfill asked for again
    after its last round finished begins a new ``round``: each partition is then launched
    again only if it has no completed run (``rerun_all``: all of them).
    """

    backfill_id: str
    pipeline: str
    round: int
    partitions: list[str]
    """The partition keys, in the order they are launched (a time window's key is its
    start, ISO 8601 in the backfill's time zone)."""
    reason: str
    max_concurrent: int = 0
    """At most this many of the backfill's runs not ended at once (0: no limit)."""
    rerun_all: bool = False
    every: str = ""
    """The cron expression the time windows follow ("" for listed partition keys)."""
    timezone: str = ""
    schedule: str = ""
    """The schedule whose cron, zone, input, config and tags the windows follow."""
    tags: dict[str, str] = {}
    requested_by: str = ""


class PartitionLaunched(msgspec.Struct, tag="partition_launched", **_OPTS):
    """A backfill launched one partition's run.

    ``attempt``: how many runs this backfill launched for the partition, this one
    included; the run id derives from the backfill, the partition and the attempt, so
    two drivers of one backfill, or a restarted one, never start a partition twice.
    """

    backfill_id: str
    pipeline: str
    round: int
    partition: str
    run_id: str
    attempt: int
    reason: str
    window_start: str = ""
    window_end: str = ""


class PartitionSkipped(msgspec.Struct, tag="partition_skipped", **_OPTS):
    """A backfill round launched nothing for a partition, and why.

    ``because``: ``completed`` (``run_id`` completed in an earlier round) or ``running``
    (``run_id``, launched earlier, has not ended: the round follows it instead).
    """

    backfill_id: str
    pipeline: str
    round: int
    partition: str
    because: Literal["completed", "running"]
    reason: str
    run_id: str = ""


class BackfillFinished(msgspec.Struct, tag="backfill_finished", **_OPTS):
    """Every partition of a backfill round was decided and every run it follows ended."""

    backfill_id: str
    pipeline: str
    round: int
    completed: int
    """Partitions whose run of this round (launched or followed) completed."""
    failed: int
    skipped: int
    """Partitions skipped because an earlier round's run completed."""
    cancelled: int = 0
    failed_partitions: list[str] = []
    reason: str = ""


class RunWithdrawn(msgspec.Struct, tag="run_withdrawn", **_OPTS):
    """A run waiting for a slot was cancelled: it leaves the queue without taking a slot.

    Recorded in the pipeline's admission chain by the admission service; the run's own
    log then holds its ``run_requested`` and ``run_cancelled`` (the orchestrator records
    them, starting nothing).
    """

    run_id: str
    pipeline: str
    reason: str
    requested_by: str = ""
    request_seq: int = 0


Body: TypeAlias = (
    RunRequested
    | RunStarted
    | PhaseScheduled
    | PhaseStarted
    | PhaseCompleted
    | PhaseFailed
    | PhaseRetryScheduled
    | PhaseSkipped
    | PhaseTimedOut
    | ContractChecked
    | InvariantChecked
    | CircuitOpened
    | CircuitClosed
    | RunCompleted
    | RunFailed
    | RunCancelled
    | TriggerEvaluated
    | ScheduleTicked
    | RunQueued
    | RunReleased
    | RunWithdrawn
    | BackfillRequested
    | PartitionLaunched
    | PartitionSkipped
    | BackfillFinished
)

BODY_TYPES: Final[tuple[type[Body], ...]] = get_args(Body)
KINDS: Final[dict[str, type[Body]]] = {
    t.__struct_config__.tag: t  # type: ignore[misc]
    for t in BODY_TYPES
}
ENDING_KINDS: Final[frozenset[str]] = frozenset({"run_completed", "run_failed", "run_cancelled"})
"""The kinds of the signal that ends a run: nothing follows it in the run's chain."""
