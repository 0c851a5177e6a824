"""Run a pipeline in a unit test, with no server: :func:`run_pipeline`.

```python
from examples.clustering import pipeline
from sisas.testing import run_pipeline

def test_clustering() -> None:
    result = run_pipeline(pipeline, {"name": "t", "values": [1, 2, 10, 11], "k": 2}, seed=7)
    result.raise_for_status()         # RunFailedError naming the failed phase, if one failed
    assert result.output("cluster")["sizes"] == [2, 2]
    assert result.check("INV-7.1").passed
```

The run is decided by the orchestrator's own pure ``decide``/``evolve`` and each phase
attempt is executed as a worker executes it (:class:`sisas.handlers.local.LocalRun`), so
its signals are the log a server would record for the same run: they chain-verify, and
its fingerprint is the one a distributed run of the same input and seed gives.

What differs from a worker, on purpose:

- **Timeouts** are enforced, but a thread cannot be killed: a phase with ``timeout=``
  runs in a daemon thread, and when it overruns that thread is *abandoned*, not killed
  (the real worker kills its child process). The attempt is recorded as the worker
  records it (``phase_timed_out``, then a retry while the phase's retries allow). The
  abandoned thread runs on until the phase function returns, even while the retry
  runs, so side effects it makes after its timeout still happen and a phase that never
  returns keeps its thread (a daemon thread: it never keeps the interpreter from
  exiting). Its result is dropped. The timeout counts from the thread's start (the
  worker's, from the moment its child has loaded the pipeline). A phase without a
  timeout runs in the calling thread.
- **Memory limits** are not enforced: every phase shares the test's process.
- **Backoff delays** are decided and recorded (``phase_retry_scheduled.delay``,
  ``phase_scheduled.delay``) but not waited: the retry runs at once.
- **Time**: every signal's ``at`` is the fixed ``at`` argument (default
  :data:`DEFAULT_AT`), so two runs of one input give the same log byte for byte but for
  the phases' durations, which are measured with ``time.perf_counter`` as a worker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import pydantic_core

from sisas.client.starting import check_settings
from sisas.errors import RunCancelledError, RunFailedError, UsageError
from sisas.handlers import binary
from sisas.handlers.execute import Outcome, PhaseInputs
from sisas.handlers.local import LocalRun
from sisas.handlers.orchestrator import satisfied
from sisas.handlers.state import RunState, RunStatus
from sisas.pipeline import Pipeline
from sisas.services.output_capture import routed_output
from sisas.signals import (
    ContractChecked,
    ErrorInfo,
    InvariantChecked,
    Scalar,
    Signal,
    Violation,
)

if TYPE_CHECKING:
    from sisas.client import Client

__all__ = ["DEFAULT_AT", "CheckResult", "RunResult", "run_pipeline", "served_in_memory"]

DEFAULT_AT: Final = datetime(2026, 1, 1, tzinfo=UTC)
"""The time every signal of a test run carries unless ``at=`` says otherwise."""


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """One contract or invariant check, as its ``contract_checked`` or
    ``invariant_checked`` signal records it.

    ``id`` is an invariant's id (``INV-7.1``) or a contract's boundary and name as the
    plan lists them (``entry:input:Points``, ``exit:Clusters``, ``bridge:clean:Model``).
    ``observed`` and ``expected`` are what an invariant returned (None for contracts);
    ``violations`` the field paths and messages of a contract that failed.
    """

    id: str
    kind: Literal["contract", "invariant"]
    phase: str
    passed: bool
    item: int | None = None
    attempt: int = 0
    observed: Scalar = None
    expected: Scalar = None
    description: str = ""
    violations: tuple[Violation, ...] = ()


@dataclass(frozen=True, kw_only=True, repr=False)
class RunResult:
    """A finished test run: its log, its state and what its phases produced.

    ``status`` is ``completed``, ``failed`` or ``cancelled``; ``fingerprint`` is the
    run's determinism fingerprint (empty unless it completed); ``outputs`` maps each
    phase with an output to its semantic digest (``run_completed.outputs`` when the run
    completed); ``checks`` lists every contract and invariant check in log order, those
    of failed attempts included; ``failed_phase`` and ``error`` say why a run failed.
    ``artifacts`` holds every stored byte string by its digest: the run input, each
    output, and a failed attempt's quarantined output (``state.phase(P).quarantined``).
    """

    run_id: str
    pipeline: str
    status: RunStatus
    state: RunState
    signals: list[Signal]
    fingerprint: str
    outputs: dict[str, str]
    checks: list[CheckResult]
    failed_phase: str
    error: ErrorInfo | None
    artifacts: Mapping[str, bytes]
    logs: Mapping[tuple[str, int | None, int], str]
    """Each attempt's log by (phase, item, attempt): what ``ctx.log`` said at INFO and
    above and the traceback of an exception (see :meth:`log`)."""

    def __repr__(self) -> str:
        why = f", failed_phase={self.failed_phase!r}" if self.failed_phase else ""
        if self.error is not None:
            why += f", error={self.error.kind + ': ' + self.error.message!r}"
        return f"RunResult(run_id={self.run_id!r}, status={self.status!r}{why})"

    def output(self, phase: str, *, item: int | None = None) -> Any:
        """The decoded output of ``phase`` (JSON as Python data, a numpy array as an
        ndarray, a table as the phase returned it: a DataFrame or a pyarrow Table); for
        a fan-out, the list of its items' outputs in item order (``None`` where an item
        of a ``partial`` fan-out failed), or one item's output with ``item=``. Raises
        :class:`UsageError` when the phase has no output (unknown, failed, skipped or
        never run), saying which."""
        if item is None and self._fan_out(phase):
            return [None if b is None else _decoded(b) for b in self._items(phase)]
        return _decoded(self.output_bytes(phase, item=item))

    def log(self, phase: str, *, item: int | None = None, attempt: int | None = None) -> str:
        """What an attempt of ``phase`` (of one ``item``) logged: ``ctx.log`` lines at
        INFO and above, each with its offset from the attempt's start, and the traceback
        when it raised; the last attempt's unless ``attempt=`` is given. "" when it
        logged nothing. (A worker also keeps what a phase prints; in process, print
        goes to the test's own output.)"""
        if phase not in self.state.phases:
            known = ", ".join(self.state.phases) or "none"
            raise UsageError(f"run {self.run_id} has no phase {phase!r} (phases: {known})")
        ps = self.state.phase(phase)
        st = ps.item_states.get(item) if item is not None else ps
        if st is None or (item is None and ps.items is not None and ps.status != "skipped"):
            if item is None:
                raise UsageError(f"{phase} is a fan-out of {ps.items} items: pass item=")
            raise UsageError(f"{phase} has no item {item}")
        last = st.attempt
        if attempt is None:
            attempt = last
        elif not 0 <= attempt <= last:
            where = phase if item is None else f"{phase}[{item}]"
            raise UsageError(f"{where} has no attempt {attempt} (attempts 0 to {last})")
        return self.logs.get((phase, item, attempt), "")

    def output_bytes(self, phase: str, *, item: int | None = None) -> bytes:
        """The stored bytes of ``phase``'s output (one item's with ``item=``, required
        for a fan-out). Raises :class:`UsageError` as :meth:`output` does."""
        fan_out = self._fan_out(phase)
        ps = self.state.phase(phase)
        if item is not None:
            if not fan_out:
                raise UsageError(f"{phase} is not a fan-out (no map_over=): omit item=")
            it = ps.item_states.get(item)
            if it is None or it.status != "completed":
                status = it.status.replace("_", " ") if it is not None else "never scheduled"
                raise UsageError(f"item {item} of {phase} has no output: it is {status}")
            return self.artifacts[it.artifact]
        if fan_out:
            raise UsageError(
                f"{phase} is a fan-out of {ps.item_count or 0} items: pass item= for "
                f"one item's bytes, or call output({phase!r}) for the decoded list"
            )
        self._require_completed(phase)
        return self.artifacts[ps.artifact]

    def check(self, id: str, *, phase: str | None = None, item: int | None = None) -> CheckResult:
        """The check that counts for ``id``: the last one recorded (a retried phase is
        checked again). Pass ``phase=`` or ``item=`` when ``id`` was checked in several
        places (a contract named alike in two phases, an invariant of a fan-out's
        items). Raises :class:`UsageError` naming the checks there are."""
        found = [
            c
            for c in self.checks
            if c.id == id
            and (phase is None or c.phase == phase)
            and (item is None or c.item == item)
        ]
        if not found:
            where = "".join(
                f" {k}={v!r}" for k, v in (("phase", phase), ("item", item)) if v is not None
            )
            known = ", ".join(sorted({c.id for c in self.checks})) or "none"
            raise UsageError(
                f"run {self.run_id} recorded no check {id!r}{where}; its checks: {known}"
            )
        places = list(dict.fromkeys(_place(c) for c in found))
        if len(places) > 1:
            shown = ", ".join(places[:5]) + (", …" if len(places) > 5 else "")
            raise UsageError(
                f"{id} was checked in {len(places)} places ({shown}): pass phase= or item="
            )
        return found[-1]

    def raise_for_status(self) -> RunResult:
        """Return this result if the run completed; else raise :class:`RunFailedError`
        (:class:`RunCancelledError` for a cancelled run) naming the failed phase, its
        error kind and message, and its traceback."""
        if self.status == "completed":
            return self
        where = f"run {self.run_id} of {self.pipeline}"
        error = self.error
        if self.status == "failed" and error is not None:
            at = f" at phase {self.failed_phase}" if self.failed_phase else ""
            message = f"{where} failed{at}: {error.kind}: {error.message}"
            if error.detail:
                message += f"\n{error.detail.rstrip()}"
        else:
            message = f"{where} ended {self.status} without completing"
        kind = RunCancelledError if self.status == "cancelled" else RunFailedError
        raise kind(
            message,
            run_id=self.run_id,
            status=self.status,
            phase=self.failed_phase,
            kind=error.kind if error is not None else "",
            detail=error.detail if error is not None else "",
            result=self,
        )

    def _fan_out(self, phase: str) -> bool:
        """Whether ``phase`` maps over a list; raises :class:`UsageError` for no phase."""
        plans = {p.name: p for p in self.state.plan.phases} if self.state.plan else {}
        if phase not in plans:
            raise UsageError(f"{self.pipeline} has no phase {phase!r} (phases: {', '.join(plans)})")
        return bool(plans[phase].map_over)

    def _items(self, phase: str) -> list[bytes | None]:
        self._require_completed(phase)
        ps = self.state.phase(phase)
        out: list[bytes | None] = []
        for i in range(ps.item_count or 0):
            it = ps.item_states.get(i)
            out.append(self.artifacts[it.artifact] if it and it.status == "completed" else None)
        return out

    def _require_completed(self, phase: str) -> None:
        ps = self.state.phase(phase)
        if ps.status == "completed":
            return
        if ps.status == "skipped":
            why = f"it was skipped ({ps.skip_reason})"
        elif ps.status in ("failed", "timed_out") and ps.error is not None:
            why = f"it {ps.status.replace('_', ' ')} ({ps.error.kind}: {ps.error.message})"
        elif ps.error is not None:
            why = f"it did not complete ({ps.error.kind}: {ps.error.message})"
        else:
            why = f"the run ended ({self.status}) before it completed"
        raise UsageError(f"{phase} has no output: {why}")


def _decoded(data: bytes) -> Any:
    return json.loads(data) if binary.format_of(data) == "json" else binary.decode(data)


def _place(check: CheckResult) -> str:
    return check.phase + ("" if check.item is None else f"[{check.item}]")


def _checks(signals: list[Signal]) -> list[CheckResult]:
    out = []
    for s in signals:
        body = s.body
        if isinstance(body, ContractChecked):
            out.append(
                CheckResult(
                    id=f"{body.boundary}:{body.contract}",
                    kind="contract",
                    phase=s.phase,
                    passed=body.passed,
                    item=body.item,
                    attempt=s.attempt,
                    violations=tuple(body.violations),
                )
            )
        elif isinstance(body, InvariantChecked):
            out.append(
                CheckResult(
                    id=body.invariant,
                    kind="invariant",
                    phase=s.phase,
                    passed=body.passed,
                    item=body.item,
                    attempt=s.attempt,
                    observed=body.observed,
                    expected=body.expected,
                    description=body.description,
                )
            )
    return out


def _within(attempt: Callable[[], Outcome], timeout: float, name: str) -> tuple[Outcome, bool]:
    """Run ``attempt`` in a daemon thread for at most ``timeout`` seconds: (its outcome,
    False), or, when it overruns, a Timeout outcome and True; the thread is abandoned."""
    box: list[Outcome | BaseException] = []
    finished = threading.Event()

    def target() -> None:
        try:
            box.append(attempt())
        except BaseException as exc:  # handed to the caller, never lost in the thread
            box.append(exc)
        finally:
            finished.set()

    start = time.perf_counter()
    threading.Thread(target=target, name=name, daemon=True).start()
    if not finished.wait(timeout):
        error = ErrorInfo(
            kind="Timeout",
            message=f"abandoned after its timeout of {timeout}s (its thread runs on)",
            retryable=True,
        )
        return Outcome(status="failed", duration=time.perf_counter() - start, error=error), True
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0], False


class _TimedRun(LocalRun):
    """A LocalRun that enforces each phase's timeout as far as a thread can."""

    def execute(self, scheduled: Signal, inputs: PhaseInputs) -> tuple[Outcome, bool]:
        """The attempt, what it prints kept in its log as a worker keeps it."""
        attempt = self.attempt_of(scheduled, inputs)
        written = self.attempt_log(scheduled)

        def captured() -> Outcome:
            if written is None:
                return attempt()
            with routed_output(written):
                return attempt()

        spec = self.pipeline.phases.get(scheduled.phase)
        if spec is None or spec.timeout is None:
            return captured(), False
        name = f"sisas-{self.state.run_id}-{scheduled.phase}-{scheduled.attempt}"
        outcome, timed_out = _within(captured, spec.timeout, name)
        if timed_out and written is not None and outcome.error is not None:
            written.add("ERROR", outcome.error.message)
        return outcome, timed_out


def _encode(input: object, input_bytes: bytes | None) -> bytes:
    if input_bytes is not None:
        if input is not None:
            raise UsageError("give the input as a value or as input_bytes=, not both")
        return bytes(input_bytes)
    try:
        return pydantic_core.to_json(input)
    except pydantic_core.PydanticSerializationError as exc:
        raise UsageError(
            f"the input cannot be sent as JSON ({exc}): pass dicts, lists, numbers, "
            "strings or pydantic models, or the raw bytes as input_bytes="
        ) from None


def run_pipeline(
    pipeline: Pipeline,
    input: object = None,
    *,
    input_bytes: bytes | None = None,
    seed: int = 0,
    config: Mapping[str, Scalar] | None = None,
    at: datetime = DEFAULT_AT,
    run_id: str | None = None,
    secrets: Mapping[str, str] | None = None,
) -> RunResult:
    """Run ``pipeline`` to its end in this process and return what it recorded.

    ``secrets``: the values phases read with ``ctx.secret(name)`` (a worker resolves them
    from its environment; here the test gives them; they never enter the signals).

    ``input`` is any JSON-able value (dicts, lists, numbers, strings, pydantic models;
    None sends JSON ``null``), sent as JSON; ``input_bytes`` sends bytes as they are
    (e.g. a file's, or bytes that are not JSON, to test the first phase's contract).
    ``seed`` is the run seed, ``config`` what ``sisas run --set`` would pass
    (``{"publish.enabled": True}``, or the pipeline's own keys, read as ``ctx.config``);
    ``at`` the time every signal carries (timezone-aware; default :data:`DEFAULT_AT`);
    ``run_id`` defaults to ``<pipeline>-test``.

    A phase that fails does not raise here: the result says so (``status``,
    ``failed_phase``, ``error``); :meth:`RunResult.raise_for_status` raises. Timeouts
    are enforced by abandoning the phase's thread, memory limits are not, and backoff
    delays are recorded but not waited (see :mod:`sisas.testing`). Raises
    :class:`UsageError` for an input that cannot be sent or a naive ``at``, and
    :class:`~sisas.errors.InvalidPipeline` for a pipeline that cannot run.
    """
    if at.tzinfo is None:
        raise UsageError(f"at={at.isoformat()} has no timezone: pass e.g. tzinfo=UTC")
    data = _encode(input, input_bytes)
    run = _TimedRun(
        pipeline,
        run_id or f"{pipeline.name}-test",
        at=at.astimezone(UTC),
        clock=time.perf_counter,
        secrets=secrets,
        log_clock=time.perf_counter,
    )
    check_settings(config or {}, pipeline.plan(), how="config key ")  # as run --set does
    run.start(data, seed=seed, config=config)
    state = run.run(max_steps=sys.maxsize)
    return RunResult(
        run_id=state.run_id,
        pipeline=pipeline.name,
        status=state.status,
        state=state,
        signals=list(run.signals),
        fingerprint=state.fingerprint,
        outputs={name: ps.output_digest for name, ps in state.phases.items() if satisfied(ps)},
        checks=_checks(run.signals),
        failed_phase=state.failed_phase,
        error=state.error,
        artifacts=dict(run.artifacts),
        logs=dict(run.logs),
    )


@contextlib.asynccontextmanager
async def served_in_memory(*pipelines: Pipeline, concurrency: int = 2) -> AsyncIterator[Client]:
    """The real orchestrator and worker, serving ``pipelines`` on in-memory ports (no
    server, nothing written to disk), and a :class:`~sisas.client.Client` on them::

        async with served_in_memory(pipeline) as client:
            handle = await client.start("etl", {"rows": 10})
            result = await handle.result(timeout=30)

    Unlike :func:`run_pipeline`, runs go through the services as on a server: commits,
    work offered and taken, phases with a timeout in child processes (killed past it),
    reports, retries, cancel, attempt logs; a test of how the pipeline runs, in about a
    second. What needs a projection (``client.runs()``) needs a server. The plans are
    registered before the client is handed over."""
    from sisas.bus.memory import memory_ports
    from sisas.client import Client
    from sisas.services.orchestrator import Orchestrator
    from sisas.services.worker import Worker

    ports = memory_ports()
    orchestrator = Orchestrator(ports)
    worker = Worker(
        ports, {p.name: p for p in pipelines}, concurrency=concurrency, local=orchestrator
    )
    await worker.register()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(orchestrator.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        yield Client(ports, requested_by="sisas.testing")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
