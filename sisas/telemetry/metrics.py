"""The metrics sisas records: phase attempts, durations, retries, contract and
invariant failures, circuit state, runs ended, rejected inputs and refused work.

Instruments come from the global meter provider, so they are no-ops until one is
installed (:func:`sisas.telemetry.setup.install` or the application's own SDK setup).
Attributes are low-cardinality on purpose: pipeline, phase, status, check name; never
run ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import metrics

from sisas.handlers.circuit import Circuit
from sisas.signals.envelope import Signal
from sisas.signals.inputs import ContractResult, InvariantResult

__all__ = ["record_attempt", "record_decision", "record_refused", "record_rejected"]

_meter = metrics.get_meter("sisas")
_attempts = _meter.create_counter(
    "sisas.phase.attempts",
    unit="{attempt}",
    description="Phase attempts finished by workers, by pipeline, phase and status",
)
_duration = _meter.create_histogram(
    "sisas.phase.duration", unit="s", description="Time a phase attempt ran, by status"
)
_retries = _meter.create_counter(
    "sisas.phase.retries",
    unit="{attempt}",
    description="Phase attempts scheduled again after a failure",
)
_contract_failures = _meter.create_counter(
    "sisas.contract.failures",
    unit="{check}",
    description="Contract checks that failed, by contract and boundary",
)
_invariant_failures = _meter.create_counter(
    "sisas.invariant.failures", unit="{check}", description="Invariants that failed, by name"
)
_circuit_state = _meter.create_gauge(
    "sisas.circuit.state",
    unit="1",
    description="A phase's circuit breaker: 1 open (work held back), 0 closed",
)
_runs_ended = _meter.create_counter(
    "sisas.runs.ended", unit="{run}", description="Runs that ended, by pipeline and status"
)
_rejected = _meter.create_counter(
    "sisas.inputs.rejected",
    unit="{message}",
    description="Messages on SISAS_IN the orchestrator rejected as not valid",
)
_refused = _meter.create_counter(
    "sisas.worker.refused",
    unit="{attempt}",
    description="Scheduled phases a worker refused: unsigned, invalid or untrusted signature",
)
ENDINGS = {"run_completed": "completed", "run_failed": "failed", "run_cancelled": "cancelled"}


def record_attempt(
    pipeline: str,
    phase: str,
    status: str,
    duration: float,
    contracts: Sequence[ContractResult],
    invariants: Sequence[InvariantResult],
) -> None:
    """A worker finished one attempt of ``phase``."""
    where = {"sisas.pipeline": pipeline, "sisas.phase": phase}
    _attempts.add(1, {**where, "sisas.status": status})
    _duration.record(duration, {**where, "sisas.status": status})
    for c in contracts:
        if not c.passed:
            _contract_failures.add(
                1, {**where, "sisas.contract": c.contract, "sisas.boundary": c.boundary}
            )
    for i in invariants:
        if not i.passed:
            _invariant_failures.add(1, {**where, "sisas.invariant": i.invariant})


def record_decision(
    pipeline: str, signals: Sequence[Signal], circuits: Mapping[str, Circuit]
) -> None:
    """The orchestrator appended ``signals`` and changed ``circuits`` (by phase)."""
    for s in signals:
        if s.kind == "phase_retry_scheduled":
            _retries.add(1, {"sisas.pipeline": pipeline, "sisas.phase": s.phase})
        elif s.kind in ENDINGS:
            _runs_ended.add(1, {"sisas.pipeline": pipeline, "sisas.status": ENDINGS[s.kind]})
    for phase, circuit in circuits.items():
        _circuit_state.set(
            int(circuit.opened_at is not None), {"sisas.pipeline": pipeline, "sisas.phase": phase}
        )


def record_rejected() -> None:
    """The orchestrator rejected a message on ``SISAS_IN``."""
    _rejected.add(1)


def record_refused(pipeline: str, phase: str, signature: str) -> None:
    """A worker refused a scheduled phase for its ``signature`` (unsigned, invalid,
    untrusted)."""
    _refused.add(
        1, {"sisas.pipeline": pipeline, "sisas.phase": phase, "sisas.signature": signature}
    )
