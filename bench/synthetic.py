"""Realistic runs without executing phases: sealed signal chains for tests and benchmarks.

Each run looks like what the orchestrator writes for a linear pipeline of ``phases``
phases: run_requested, run_started (with the plan), then per phase scheduled, started,
an entry and an exit contract check, completed; every seventh run retries its second
phase once, every eleventh fails a contract and fails; run_completed or run_failed.
Deterministic in ``seed``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sisas.handlers.derive import derive_seed, run_fingerprint
from sisas.signals import (
    ChainHead,
    ContractChecked,
    Draft,
    ErrorInfo,
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    PhaseRetryScheduled,
    PhaseScheduled,
    PhaseStarted,
    RunCompleted,
    RunFailed,
    RunRequested,
    RunStarted,
    Signal,
    Violation,
    encode_signal,
    log_subject,
)
from sisas.signals.plan import PhasePlan, PipelinePlan

__all__ = ["publish_runs", "synthetic_run", "synthetic_runs"]

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _plan(pipeline: str, phases: int) -> PipelinePlan:
    names = [f"p{i}" for i in range(phases)]
    return PipelinePlan(
        name=pipeline,
        version="1",
        fingerprint="sha256:" + "ab" * 32,
        phases=[
            PhasePlan(
                name=n,
                depends_on=names[i - 1 : i],
                retries=1,
                contracts=[f"entry:{n}:In", "exit:Out"],
                invariants=["INV-1"] if i == phases - 1 else [],
            )
            for i, n in enumerate(names)
        ],
    )


def synthetic_run(
    pipeline: str, run_id: str, *, index: int, phases: int = 5, seed: int = 0
) -> list[Signal]:
    rng = random.Random(f"{seed}:{run_id}")
    plan = _plan(pipeline, phases)
    at = T0 + timedelta(seconds=index)
    drafts: list[Draft] = []

    def emit(body: object, phase: str = "", attempt: int = 0, dt: float = 0.001) -> None:
        nonlocal at
        at += timedelta(seconds=dt)
        drafts.append(Draft(body=body, at=at, phase=phase, attempt=attempt))  # type: ignore[arg-type]

    digest = "sha256:" + f"{index:064x}"
    emit(RunRequested(pipeline_version="1", input_digest=digest, seed=index))
    emit(RunStarted(pipeline_version="1", fingerprint=plan.fingerprint, seed=index, plan=plan))
    failing = index % 11 == 10
    outputs: dict[str, str] = {}
    checks: dict[str, bool] = {}
    upstream = {"input": digest}
    for i, p in enumerate(plan.phases):
        attempt = 0
        seed_i = derive_seed(index, p.name)
        emit(PhaseScheduled(inputs=upstream, seed=seed_i), p.name)
        if i == 1 and index % 7 == 3:
            emit(PhaseStarted(worker="w1"), p.name, attempt)
            error = ErrorInfo(kind="HardFailure", message="flaky", retryable=True)
            emit(PhaseFailed(error=error, duration=0.01, worker="w1"), p.name, attempt)
            emit(PhaseRetryScheduled(next_attempt=1, delay=0.5, reason="flaky"), p.name, 0)
            attempt = 1
            emit(PhaseScheduled(inputs=upstream, seed=seed_i), p.name, attempt)
        emit(PhaseStarted(worker="w1"), p.name, attempt)
        emit(ContractChecked(contract="In", boundary="entry", passed=True), p.name, attempt)
        if failing and i == 2:
            bad = Violation(path="rows[3].value", message="must be >= 0", type="greater_than")
            emit(
                ContractChecked(contract="Out", boundary="exit", passed=False, violations=[bad]),
                p.name,
                attempt,
            )
            error = ErrorInfo(kind="ContractViolation", message="rows[3].value: must be >= 0")
            emit(PhaseFailed(error=error, duration=0.02, worker="w1"), p.name, attempt)
            emit(RunFailed(error=error, failed_phase=p.name))
            break
        emit(ContractChecked(contract="Out", boundary="exit", passed=True), p.name, attempt)
        checks[f"{p.name}:entry:In"] = checks[f"{p.name}:exit:Out"] = True
        if p.invariants:
            checks[f"{p.name}:INV-1"] = True
            emit(
                InvariantChecked(invariant="INV-1", passed=True, observed=1.0, expected=1.0),
                p.name,
                attempt,
            )
        out = "sha256:" + f"{index * 100 + i:064x}"
        duration = round(rng.uniform(0.001, 0.2), 6)
        emit(
            PhaseCompleted(output_digest=out, artifact=out, duration=duration, worker="w1"),
            p.name,
            attempt,
            dt=duration,
        )
        outputs[p.name] = out
        upstream = {p.name: out}
    else:
        emit(RunCompleted(fingerprint=run_fingerprint(outputs, checks), outputs=outputs))
    signals, _ = ChainHead(pipeline=pipeline, run_id=run_id).extend(drafts)
    return signals


def synthetic_runs(
    count: int, *, pipeline: str = "synth", phases: int = 5, start: int = 0
) -> Iterator[list[Signal]]:
    for i in range(start, start + count):
        yield synthetic_run(pipeline, f"run-{i:07d}", index=i, phases=phases)


async def publish_runs(js: Any, count: int, *, start: int = 0, window: int = 4000) -> int:
    """Publish ``count`` synthetic runs (indices from ``start``) into the log stream,
    ``window`` messages in flight (deduplicated by signal id); the signals published.

    One signal per message (log format 1, which every reader still reads): the read,
    fold and verify benchmarks compare per signal with a raw read per message."""
    pending: list[Any] = []
    published = 0
    for signals in synthetic_runs(count, start=start):
        for s in signals:
            subject = log_subject(s.pipeline, s.run_id, s.phase, s.kind)
            pending.append(
                await js.publish_async(subject, encode_signal(s), headers={"Nats-Msg-Id": s.id})
            )
        published += len(signals)
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return published
