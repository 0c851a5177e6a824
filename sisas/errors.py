"""The sisas error tree.

Every error a user can meet derives from :class:`SisasError` and carries a message that
says what was wrong and what to do. Adapters translate NATS, DuckDB and OS exceptions
into this tree; none of theirs escape.

```
SisasError
├── RunNotCompleted          a run waited for (client, sisas.testing) did not complete
│   ├── RunFailedError       it failed: the phase, its error kind and traceback
│   └── RunCancelledError    it was cancelled
├── UsageError               bad input from a person or a file: exit code 2
│   ├── InvalidName          a pipeline, run or phase name that cannot be a subject token
│   └── InvalidPipeline      a pipeline definition that cannot run (cycle, missing phase…)
├── PhaseError               raised by (or on behalf of) a phase; its name is the error kind
│   ├── HardFailure          a failure; retryable only if said so
│   ├── NonFatal             the phase failed but the run goes on without its output
│   ├── ContractViolation    an input or output does not satisfy its contract
│   ├── InvariantViolation   an output breaks a named invariant
│   ├── Timeout              the phase ran past its timeout (retryable)
│   ├── ResourceExhausted    the phase ran past its memory limit
│   ├── PhaseNotImplemented  the phase has no implementation on this worker
│   ├── WorkerLost           the worker running it disappeared (retryable)
│   └── Cancelled            the run was cancelled
├── SignalError              a message that is not a valid signal
│   ├── MalformedSignal      cannot be decoded, or not in canonical form
│   └── TamperedSignal       decodes, but its hash does not match its content
└── BusError                 the NATS side
    ├── BusUnavailable       server unreachable, or refused our credentials
    ├── AppendConflict       another writer appended to the run first
    ├── AppendFailed         the server rejected an append for another reason
    ├── StreamDrift          a stream's config differs from what sisas requires
    ├── StoreWithoutStream   the data folder held a log, the server has none
    ├── ServerAlreadyRunning another `sisas up` holds this data folder
    ├── EmbeddedServerError  the embedded nats-server failed to start or stop
    └── ArtifactNotFound     no artifact with that digest
└── ProjectionError          the DuckDB side
    ├── ProjectionBusy       another process is writing the projection file
    ├── UnknownRun           no run with that id in the projection
    └── QueryFailed          the query service answered with an error
```
"""

from __future__ import annotations

__all__ = [
    "PHASE_ERRORS",
    "AppendConflict",
    "Cancelled",
    "ContractViolation",
    "HardFailure",
    "InvalidPipeline",
    "InvariantViolation",
    "NonFatal",
    "PhaseError",
    "PhaseNotImplemented",
    "ResourceExhausted",
    "Timeout",
    "WorkerLost",
    "AppendFailed",
    "ArtifactNotFound",
    "BusError",
    "BusUnavailable",
    "EmbeddedServerError",
    "InvalidName",
    "MalformedSignal",
    "ServerAlreadyRunning",
    "SignalError",
    "SisasError",
    "StoreWithoutStream",
    "StreamDrift",
    "TamperedSignal",
    "UsageError",
    "ProjectionBusy",
    "ProjectionError",
    "QueryFailed",
    "UnknownRun",
    "RunNotCompleted",
    "RunFailedError",
    "RunCancelledError",
]


class SisasError(Exception):
    """Root of every sisas error. ``str(err)`` is a complete, user-facing sentence."""

    exit_code: int = 1


class RunNotCompleted(SisasError):
    """A run waited for (:meth:`sisas.client.RunHandle.result`,
    :meth:`sisas.testing.RunResult.raise_for_status`) ended without completing.

    ``status`` is how it ended; ``phase`` is the phase that failed it and ``kind`` its
    error kind (a :class:`PhaseError` name such as ``ContractViolation``), both empty
    when no phase did; ``detail`` is the phase's traceback, when it raised; ``result``
    is the whole result (the client's or the testing one's).
    """

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        status: str,
        phase: str = "",
        kind: str = "",
        detail: str = "",
        result: object = None,
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
        self.phase = phase
        self.kind = kind
        self.detail = detail
        self.result = result


class RunFailedError(RunNotCompleted):
    """The run failed."""


class RunCancelledError(RunNotCompleted):
    """The run was cancelled before it completed."""


class UsageError(SisasError):
    """The input given to sisas is invalid; nothing was changed."""

    exit_code = 2


class InvalidName(UsageError):
    """A name that must be usable as a NATS subject token is not."""


class SignalError(SisasError):
    """A message that is not a valid sisas signal."""


class MalformedSignal(SignalError):
    """The bytes do not decode to a signal, or are not its canonical encoding."""


class TamperedSignal(SignalError):
    """The signal decodes, but its recorded hash does not match its content."""


class BusError(SisasError):
    """An error on the NATS side, already translated from nats-py."""


class BusUnavailable(BusError):
    """The NATS server cannot be reached or refused the connection."""

    exit_code = 2


class AppendConflict(BusError):
    """Another writer appended to the run after the sequence we expected.

    ``actual_last_seq`` is the run's last stream sequence when known (0 if unknown):
    reload the run, decide again, and append with that expectation.
    """

    def __init__(self, message: str, *, expected_last_seq: int, actual_last_seq: int = 0):
        super().__init__(message)
        self.expected_last_seq = expected_last_seq
        self.actual_last_seq = actual_last_seq


class AppendFailed(BusError):
    """The server rejected an append for a reason other than a conflict."""


class StreamDrift(BusError):
    """A stream exists with a configuration sisas refuses to run on."""

    exit_code = 2


class StoreWithoutStream(BusError):
    """The data folder recorded a log, but the server has no such stream."""

    exit_code = 2


class ServerAlreadyRunning(BusError):
    """Another process already serves this data folder."""

    exit_code = 2

    def __init__(self, message: str, *, url: str, pid: int):
        super().__init__(message)
        self.url = url
        self.pid = pid


class EmbeddedServerError(BusError):
    """The embedded nats-server could not be started or stopped cleanly."""


class ArtifactNotFound(BusError):
    """No artifact is stored under the requested digest."""

    exit_code = 2


class ProjectionError(SisasError):
    """An error reading or writing the DuckDB projection, already translated."""


class ProjectionBusy(ProjectionError):
    """Another process holds the projection file for writing and serves no queries."""

    exit_code = 2


class UnknownRun(ProjectionError):
    """The projection has no run with the requested id."""

    exit_code = 2


class QueryFailed(ProjectionError):
    """The query service could not answer; its message says why."""


class InvalidPipeline(UsageError):
    """A pipeline definition that cannot run; raised at registration, before any run."""


class PhaseError(SisasError):
    """An error of a phase. The class name is the error kind recorded in the log.

    ``retryable`` says whether another attempt may succeed (retries happen only if the
    phase allows them).
    """

    retryable: bool = False

    def __init__(self, message: str = "", *, retryable: bool | None = None, detail: str = ""):
        super().__init__(message or type(self).__name__)
        if retryable is not None:
            self.retryable = retryable
        self.detail = detail

    @property
    def kind(self) -> str:
        return type(self).__name__


class HardFailure(PhaseError):
    """The phase failed. Pass ``retryable=True`` when another attempt may succeed."""


class NonFatal(PhaseError):
    """The phase failed, and the run goes on without its output."""


class ContractViolation(PhaseError):
    """A value crossing a phase boundary does not satisfy its contract."""


class InvariantViolation(PhaseError):
    """A phase output breaks a named invariant."""


class Timeout(PhaseError):
    """The phase ran past its timeout."""

    retryable = True


class ResourceExhausted(PhaseError):
    """The phase ran past its memory limit."""


class PhaseNotImplemented(PhaseError):
    """This worker has no implementation of the phase."""


class WorkerLost(PhaseError):
    """The worker running the phase disappeared."""

    retryable = True


class Cancelled(PhaseError):
    """The run was cancelled."""


PHASE_ERRORS: dict[str, type[PhaseError]] = {
    cls.__name__: cls
    for cls in (
        HardFailure,
        NonFatal,
        ContractViolation,
        InvariantViolation,
        Timeout,
        ResourceExhausted,
        PhaseNotImplemented,
        WorkerLost,
        Cancelled,
    )
}
