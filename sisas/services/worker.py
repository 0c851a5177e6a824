"""The worker shell: takes scheduled phases, runs them, stores outputs, reports.

Work arrives through one durable pull consumer per pipeline on the work queue
(``sisas.work.<pipeline>.>`` in ``SISAS_WORK``, :mod:`sisas.bus.work`): each offer is a
``phase_scheduled`` signal already durable in the log, shared by every worker of that
pipeline, so each scheduled phase (or item) goes to one worker at a time. While a
phase runs the worker tells JetStream it is still in progress; if the worker dies, the
work is redelivered after ``ack_wait`` and finished elsewhere, and the orchestrator
records one completion. A retry's backoff delay is honoured by ``nak(delay)``. Each
attempt is a span continuing the trace of its ``phase_scheduled`` signal.

With an orchestrator in the same process (``local``), the worker hands it its reports
directly (see :meth:`sisas.services.orchestrator.Orchestrator.submit`) and learns from the
answer whether the run is still going: no report crosses ``SISAS_IN`` and no read of the
log is needed to skip the work of an ended run. The work itself still comes through the
shared consumer, which is what makes one worker at a time take it, and is acknowledged
only once its outcome's signals are in the log.

With trusted keys (``SISAS_TRUSTED_KEYS``, ``bus.settings.trusted_keys``) a worker executes only
``phase_scheduled`` signals signed by one of them (:func:`sisas.handlers.trust.refusal`);
any other is refused, never executed, and reported as a failed attempt (see
:meth:`Worker._refuse`). Without trusted keys every scheduled phase is executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

import msgspec
from nats.errors import Error as NatsError

from sisas.bus.ports import Delivery, Ports, Work, closing_feed
from sisas.bus.presence import worker_subject
from sisas.bus.work import LOG_SEQ_HEADER, log_seq, work_record
from sisas.environment import capture_environment
from sisas.errors import ArtifactNotFound, BusError, SisasError
from sisas.faults import failpoint
from sisas.handlers.attempt_log import AttemptLog
from sisas.handlers.execute import Outcome, PhaseInputs, execute_phase
from sisas.handlers.state import RunState, attempt_status
from sisas.handlers.trust import refusal
from sisas.pipeline import Pipeline
from sisas.services.isolation_pool import IsolationPool
from sisas.services.output_capture import routed_output
from sisas.services.phase_threads import PhaseThreads
from sisas.services.reloading import CodeWatcher
from sisas.services.secrets import MissingSecret, resolve_secrets, secret_digests
from sisas.signals.codec import encode_signal
from sisas.signals.envelope import Signal
from sisas.signals.inputs import PhaseReport
from sisas.signals.kinds import ENDING_KINDS, ErrorInfo, PhaseScheduled, RunStarted
from sisas.signals.names import (
    live_subject,
    parse_run_subject,
    work_subject,
)
from sisas.signals.records import StoredSignal
from sisas.signals.signing import SignatureCheck
from sisas.telemetry import metrics
from sisas.telemetry.tracing import describe_attempt, message_span

__all__ = ["Worker"]

log = logging.getLogger("sisas.worker")
TRANSIENT = (NatsError, BusError, OSError, TimeoutError)
"""Failures of the server or the network: the same work is tried again later."""
SHORT_ATTEMPT = 0.05
"""Seconds within which an attempt is short: its start is reported with its outcome."""
MAX_POSTPONE = 3600.0
"""Seconds one ``nak`` postpones a backoff at most; a longer one is postponed again."""
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
Ended: TypeAlias = Literal["completed", "failed", "timed_out"]
"""How an attempt ended, as its report says."""


def _open(state: RunState, signal: Signal, body: PhaseScheduled) -> bool:
    """Whether the attempt ``signal`` schedules is still to be done in ``state``."""
    return not state.ended and attempt_status(state, signal, body) in ("scheduled", "running")


class LocalOrchestrator(Protocol):
    """An orchestrator in this process that decides reports at once (the fast path)."""

    async def submit(self, report: PhaseReport) -> RunState | None:
        """The run's latest state once ``report`` is decided and appended; None when it
        must go through ``SISAS_IN`` instead."""
        ...

    async def submit_all(self, reports: Sequence[PhaseReport]) -> list[RunState | None]:
        """:meth:`submit` for reports to be decided together (into one commit): each
        one's answer, in their order."""
        ...

    def known(self, run_id: str) -> RunState | None:
        """The run's state as this orchestrator last appended or read it (no I/O)."""
        ...

    def host(
        self,
        pipelines: Iterable[str],
        hand: Callable[[StoredSignal, dict[str, str]], Awaitable[bool]],
    ) -> None:
        """Hand this worker the attempts of ``pipelines`` it commits (eager dispatch)."""
        ...

    def unhost(self, pipelines: Iterable[str]) -> None:
        """Stop handing them over."""
        ...

    def release(self, run_id: str) -> None:
        """An attempt handed over is settled."""
        ...


@dataclass(frozen=True)
class _Seq:
    stream: int


@dataclass(frozen=True)
class _Meta:
    sequence: _Seq
    num_delivered: int = 1


class HandedOver:
    """An attempt the orchestrator in this process handed over (eager dispatch), as a
    :class:`~sisas.bus.ports.Delivery`, so it goes the way of one taken from the work
    queue. Settling it tells the orchestrator (:meth:`LocalOrchestrator.release`): acked
    or terminated, it is done; nak'ed (a server error on the way), it is offered on the
    work queue to be tried again. ``in_progress`` is the orchestrator's to say: it holds
    the run's input in progress meanwhile."""

    def __init__(
        self,
        rec: StoredSignal,
        headers: dict[str, str],
        local: LocalOrchestrator,
        work: Work,
    ) -> None:
        self._rec = rec
        self._local = local
        self._work = work
        self._settled = False
        self.subject = work_subject(rec.signal.pipeline, rec.signal.run_id)
        self.data = encode_signal(rec.signal)
        self.headers: dict[str, str] | None = {**headers, LOG_SEQ_HEADER: str(rec.stream_seq)}
        self.metadata = _Meta(_Seq(0))

    @property
    def settled(self) -> bool:
        """Whether it was acknowledged, terminated or sent back to the queue."""
        return self._settled

    def _release(self) -> None:
        if not self._settled:
            self._settled = True
            self._local.release(self._rec.signal.run_id)

    async def ack(self) -> None:
        self._release()

    async def term(self) -> None:
        self._release()

    async def nak(self, delay: float | None = None) -> None:
        try:
            await self._work.offer([self._rec])
        finally:
            self._release()

    async def in_progress(self) -> None:
        return None


def _attempt_kwargs(
    signal: Signal, body: PhaseScheduled, config: dict[str, Any], secrets: dict[str, str]
) -> dict[str, Any]:
    """What :func:`execute_phase` (or the isolation pool) is told of the attempt."""
    return {
        "run_id": signal.run_id,
        "seed": body.seed,
        "attempt": signal.attempt,
        "item": body.item,
        "config": config,
        "secrets": secrets,
    }


async def _ran(started: asyncio.Future[Outcome]) -> tuple[Outcome, bool]:
    """The outcome of an attempt started in a phase thread (it never times out there)."""
    return await started, False


class _Attempt:
    """An attempt :meth:`Worker._begin` started: its execution, the event that stops
    it, its log, and ``close`` (idempotent: stops the heartbeat, forgets the attempt and
    cancels an execution still running)."""

    def __init__(
        self,
        execution: asyncio.Task[tuple[Outcome, bool]],
        cancel: threading.Event,
        written: AttemptLog,
        close: Callable[[], None],
    ) -> None:
        self.execution = execution
        self.cancel = cancel
        self.written = written
        self._close: Callable[[], None] | None = close

    def close(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            close()


class _Heartbeat:
    """Runs ``beats`` (a coroutine telling JetStream the work is in progress, then again
    every so often) once ``after`` seconds have passed: most attempts end long before
    their first beat is due, and cost no task of their own."""

    def __init__(self, beats: Coroutine[Any, Any, None], after: float) -> None:
        self._beats = beats
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(after, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._beats)

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is None:
            self._beats.close()  # never started
        else:
            self._task.cancel()


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Outcome],
    outcome: Outcome | None,
    exc: BaseException | None,
) -> None:
    """Hand an attempt's end from its thread to the loop; an attempt abandoned by a
    worker that has stopped since (its loop closed) has nobody to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle_future, fut, outcome, exc)


def _settle_future(
    fut: asyncio.Future[Outcome], outcome: Outcome | None, exc: BaseException | None
) -> None:
    if fut.done():  # the attempt was abandoned (its run cancelled): nobody waits
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert outcome is not None
        fut.set_result(outcome)


class LogRef(NamedTuple):
    """An attempt's stored log, as its outcome names it ("" when it wrote nothing)."""

    digest: str = ""
    lines: int = 0
    dropped: int = 0


class Worker:
    """Runs the phases of ``pipelines``, ``concurrency`` at a time.

    ``local``: an orchestrator in this process to hand reports to (None: every report
    is published to ``SISAS_IN``). ``bus.settings.trusted_keys`` (``SISAS_TRUSTED_KEYS``):
    the public keys whose signature a ``phase_scheduled`` must carry to be executed
    (empty: no signature is required).
    """

    def __init__(
        self,
        bus: Ports,
        pipelines: dict[str, Pipeline],
        *,
        name: str | None = None,
        concurrency: int = 1,
        ack_wait: float = 30.0,
        local: LocalOrchestrator | None = None,
        reload: bool = False,
    ) -> None:
        self.bus = bus
        self.reload = reload
        """Watch the pipelines' files and run changed code from the next attempt on."""
        self.trusted = bus.settings.trusted_keys
        self.local = local
        self.pipelines = pipelines
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = max(1, concurrency)
        self.ack_wait = ack_wait
        self.completed = 0
        self.refused = 0
        """Scheduled phases refused for their signature (never executed)."""
        self._slots = asyncio.Semaphore(self.concurrency)
        self._configs: dict[str, dict[str, Any]] = {}
        self._long: set[tuple[str, str]] = set()
        """(pipeline, phase) whose attempts ran past :data:`SHORT_ATTEMPT` here."""
        self._environments: dict[str, str] = {}
        """Artifact digest of the environment record of each pipeline run here, named
        by every attempt's ``phase_started``."""
        self._running: dict[str, dict[asyncio.Task[tuple[Outcome, bool]], threading.Event]] = {}
        """The attempts running now, by run: their task and the event a phase sees as
        ``ctx.cancelled``."""
        self.cancelled_attempts = 0
        """Attempts stopped because their run was cancelled."""
        self.isolation = IsolationPool(self.concurrency)
        """The started children that run isolated phases (no more at once than slots)."""
        self._handed: set[asyncio.Task[None]] = set()
        """Attempts handed over by the orchestrator in this process, running."""
        self.threads = PhaseThreads()
        """The threads that run the other phases, reused from one attempt to the next."""

    async def register(self) -> None:
        """Publish each pipeline's plan with the environment this worker runs it in
        (recorded by every run that follows the plan: :mod:`sisas.environment`)."""
        registry = self.bus.plans
        for pipe in self.pipelines.values():
            environment = capture_environment(pipe, nats_server=self.bus.server_version)
            record = msgspec.json.encode(environment, order="sorted")
            self._environments[pipe.name] = await self.bus.artifacts.put(record)
            await registry.publish(msgspec.structs.replace(pipe.plan(), environment=environment))

    async def run(self, stop: asyncio.Event) -> None:
        """Register the plans, then take work until ``stop`` is set, answering presence
        requests for each pipeline meanwhile (:mod:`sisas.bus.presence`)."""
        await self.register()
        subjects = [worker_subject(name) for name in self.pipelines]
        hosted = list(self.pipelines)
        async with (
            self.isolation,  # left last: its children outlive the attempts that use them
            self.bus.wire.answering(subjects, self.about),
            self._watching_cancellations(),
            asyncio.TaskGroup() as tg,
        ):
            self.isolation.warm(self.pipelines.values())
            for name in self.pipelines:
                tg.create_task(self._consume(name, stop))
            if self.reload:
                tg.create_task(self._reloading(stop))
            if self.local is not None:
                self.local.host(hosted, self.take)
                tg.create_task(self._until_stopped(stop, hosted))

    async def _until_stopped(self, stop: asyncio.Event, hosted: list[str]) -> None:
        """Take attempts handed over until ``stop``; then let those running end."""
        assert self.local is not None
        try:
            await stop.wait()
        finally:
            self.local.unhost(hosted)
            if self._handed:
                await asyncio.wait(self._handed, timeout=self.ack_wait)

    async def take(self, rec: StoredSignal, headers: dict[str, str]) -> bool:
        """Run an attempt the orchestrator in this process has just committed, without
        the work queue, when a slot is free now; False (it offers it on the queue)
        when not."""
        if self._slots.locked() or self.local is None:
            return False
        await self._slots.acquire()  # free: taken at once
        msg = HandedOver(rec, headers, self.local, self.bus.work)
        task = asyncio.create_task(self._handle_handed(msg))
        self._handed.add(task)
        task.add_done_callback(self._handed.discard)
        return True

    async def _handle_handed(self, msg: HandedOver) -> None:
        try:
            await self._handle(msg)
        finally:
            if not msg.settled:  # this worker stopped on the way: someone else does it
                with contextlib.suppress(Exception):
                    await msg.nak()

    @contextlib.asynccontextmanager
    async def _watching_cancellations(self) -> AsyncIterator[None]:
        """Stop the attempts of a run the moment its ``run_cancelled`` is appended: the
        log's subject of that kind is watched with a core subscription (one message per
        cancelled run, whoever cancelled it). A subscription the server refuses (a role
        without the permission) only means attempts run to their end, as before."""

        def on_commit(subject: str, data: bytes) -> None:
            # A cheap test first: most commits end nothing (a failed run needs no more
            # work either).
            if b'"kind":"run_cancelled"' not in data and b'"kind":"run_failed"' not in data:
                return
            parsed = parse_run_subject(subject)
            if parsed is not None:
                self._cancel_run(parsed[1])

        async with self.bus.wire.on_commits(on_commit):
            yield

    def _cancel_run(self, run_id: str) -> None:
        """Stop every attempt of ``run_id`` running here: a child process is killed, a
        phase in a thread sees ``ctx.cancelled`` and is no longer waited for."""
        for task, event in self._running.get(run_id, {}).items():
            event.set()
            task.cancel()

    def _secret_digests(self, signal: Signal) -> dict[str, str]:
        """What the log records of the secrets the attempt will read (names and keyed
        digests; :mod:`sisas.services.secrets`); a missing one is recorded by name and
        fails the attempt when it runs."""
        pipe = self.pipelines.get(signal.pipeline)
        spec = pipe.phases.get(signal.phase) if pipe else None
        if spec is None or not spec.secrets:
            return {}
        try:
            return secret_digests(resolve_secrets(spec.secrets))
        except MissingSecret:
            return dict.fromkeys(spec.secrets, "")

    def about(self) -> dict[str, object]:
        """What this worker answers a presence request with: its name, its pipelines and
        the fingerprint of the code it runs for each (``sisas run FILE`` compares it)."""
        return {
            "worker": self.name,
            "pipelines": sorted(self.pipelines),
            "fingerprints": {n: p.plan().fingerprint for n, p in sorted(self.pipelines.items())},
        }

    async def _reloading(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Load changed pipeline code (see :mod:`sisas.services.reloading`) until stopped."""
        watcher = CodeWatcher(self.pipelines)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            changed = watcher.changed()
            if not changed or stop.is_set():
                continue
            before = {n: p.plan().fingerprint for n, p in self.pipelines.items()}
            try:
                fresh = watcher.reload()
            except SisasError as exc:
                log.error("%s changed; the previous code keeps running: %s", changed[0], exc)
                continue
            for name, pipe in fresh.items():
                if name not in self.pipelines:
                    log.warning(
                        "%s is new in the reloaded code: restart the worker to run it", name
                    )
                    continue
                self.pipelines[name] = pipe
                log.warning(
                    "reloaded %s from %s: code fingerprint %s -> %s",
                    name,
                    pipe.source,
                    before[name][:19],
                    pipe.plan().fingerprint[:19],
                )
            self.isolation.retire(self.pipelines.values())  # children holding old code end
            await self.register()

    async def _consume(self, pipeline: str, stop: asyncio.Event) -> None:
        feed = await self.bus.work.consume(pipeline, ack_wait=self.ack_wait)
        tasks: set[asyncio.Task[None]] = set()
        async with closing_feed(feed):
            while not stop.is_set():
                # Ask for work only while a slot is free, and take the slot once work
                # arrives: a pull waiting at the server holds no slot, so a worker of
                # many pipelines does not starve the busy one while the others' pulls
                # wait out their timeouts.
                await self._slots.acquire()
                self._slots.release()
                try:
                    # As many as there are free slots: a fan-out's items come a few at
                    # a time, not one pull request each (the fetch returns as soon as
                    # anything is there, with what is there).
                    msgs = await feed.fetch(self._free_slots(), timeout=0.25)
                except Exception as exc:
                    if not isinstance(exc, TimeoutError):
                        log.warning("worker fetch failed: %s; retrying", exc)
                        await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    await self._slot_for(msg)
                    task = asyncio.create_task(self._handle(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=self.ack_wait)

    def _free_slots(self) -> int:
        """Slots free now (at least 1: the caller has just seen one free)."""
        return max(1, self._slots._value)  # asyncio.Semaphore's count, read only

    async def _slot_for(self, msg: Delivery) -> None:
        """Take a slot for ``msg`` (at once, unless another pipeline's work took the
        last one meanwhile), telling the server it is in progress while waiting."""
        while True:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.ack_wait / 3)
                return
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _handle(self, msg: Delivery) -> None:
        released = False

        def release() -> None:
            # The slot bounds phases running, not reports on their way: freeing it once
            # the output is stored lets the next pull request wait at the server while
            # the outcome is decided, so the next phase arrives the moment it is scheduled.
            nonlocal released
            if not released:
                released = True
                self._slots.release()

        try:
            await self._work(msg, release)
        except TRANSIENT as exc:  # never let one phase stop the worker
            log.exception("work at log seq %s failed: %s", log_seq(msg), exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        except Exception as exc:  # the work itself cannot be done: trying again cannot help
            log.exception("work at log seq %s cannot be done: %s", log_seq(msg), exc)
            try:
                await self._give_up(msg, exc)
            except Exception:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
        finally:
            release()

    async def _give_up(self, msg: Delivery, exc: Exception) -> None:
        """Report the attempt failed (not retryable), so the run records why, and drop it."""
        rec = work_record(msg)
        if isinstance(rec, StoredSignal) and isinstance(rec.signal.body, PhaseScheduled):
            why = f"the worker {self.name} could not run this attempt: {type(exc).__name__}: {exc}"
            error = ErrorInfo(kind="HardFailure", message=why[:1000], retryable=False)
            outcome = Outcome(status="failed", error=error)
            await self._report(self._report_of(rec.signal, rec.signal.body, "failed", outcome))
        await msg.term()

    async def _work(self, msg: Delivery, executed: Callable[[], None]) -> None:
        """What the worker does with one phase_scheduled: admit it (:meth:`_admit`),
        attempt it (:meth:`_begin`, :meth:`_finish`), report its start and outcome, and
        acknowledge it.

        A short attempt (done within :data:`SHORT_ATTEMPT`) reports its start and its
        outcome together: a local orchestrator decides both into one commit, so the
        log records ``phase_started`` at the cost of no write of its own. A longer one
        reports its start (:meth:`_claim`) as soon as it is known to be long (at once
        for a phase whose attempts ran long before on this worker), and is stopped if
        the claim finds it no longer to be done. The span of the attempt
        covers its reports, not its ack; ``executed`` is called once the attempt's
        output is stored."""
        admitted = await self._admit(msg)
        if admitted is None:
            return
        signal, body = admitted
        attributes: dict[str, str | int] = {
            "sisas.phase": signal.phase,
            "sisas.attempt": signal.attempt,
            "sisas.item": -1 if body.item is None else body.item,
            "sisas.worker": self.name,
        }
        with message_span(
            f"phase {signal.phase}", msg.headers, signal.run_id, signal.pipeline, attributes
        ) as span:
            secrets = self._secret_digests(signal)
            attempt = self._begin(msg, signal, body)
            try:
                known_long = (signal.pipeline, signal.phase) in self._long
                done, _ = await asyncio.wait(
                    {attempt.execution}, timeout=0 if known_long else SHORT_ATTEMPT
                )
                if not done and not await self._claim(msg, signal, body, secrets):
                    attempt.cancel.set()  # the run ended or the attempt is stale: stop it
                    attempt.execution.cancel()
                    await self._finish(attempt, signal, body)
                    return
                outcome, status, artifact, written = await self._finish(attempt, signal, body)
                if not done:  # its next attempts report their start at once
                    self._long.add((signal.pipeline, signal.phase))
            finally:
                attempt.close()  # this worker is stopping, if it is not closed yet
            executed()
            describe_attempt(span, status, outcome)
            failpoint("worker.before_report")
            if done:
                await self._report_short(signal, body, secrets, status, outcome, artifact, written)
            else:
                await self._report(
                    self._report_of(signal, body, status, outcome, artifact, written=written)
                )
        await self._settle(msg, signal, status, outcome)

    async def _report_short(
        self,
        signal: Signal,
        body: PhaseScheduled,
        secrets: dict[str, str],
        status: Ended,
        outcome: Outcome,
        artifact: str,
        written: LogRef,
    ) -> None:
        """Report a short attempt's start and outcome: submitted together to a local
        orchestrator (one commit), one after the other through ``SISAS_IN``."""
        started = self._report_of(signal, body, "started", secrets=secrets)
        ended = self._report_of(signal, body, status, outcome, artifact, written=written)
        answers: list[RunState | None] = [None, None]
        if self.local is not None:
            answers = await self.local.submit_all([started, ended])
        for report, state in zip((started, ended), answers, strict=True):
            if state is None:
                await self.bus.inputs.publish(report)

    async def _admit(self, msg: Delivery) -> tuple[Signal, PhaseScheduled] | None:
        """The scheduled phase ``msg`` holds, when it is to be attempted now; None when
        it is settled here instead: terminated when it is not a phase_scheduled or its
        signature is refused (:meth:`_refuse`), acknowledged when its run ended,
        postponed (nak'ed) while its backoff lasts."""
        rec = work_record(msg)
        if not isinstance(rec, StoredSignal) or not isinstance(rec.signal.body, PhaseScheduled):
            log.error(
                "not a phase_scheduled signal offered at SISAS_WORK seq %s: %s",
                msg.metadata.sequence.stream,
                getattr(rec, "reason", "wrong kind"),
            )
            await msg.term()
            return None
        signal, body = rec.signal, rec.signal.body
        refused = refusal(signal, self.trusted)
        if refused is not None:  # before anything else: nothing in it is to be acted on
            await self._refuse(msg, signal, body, refused)
            return None
        if self.local is None and await self._ended(signal.run_id):
            await msg.ack()  # the run ended (cancelled, failed elsewhere): nothing to do
            return None
        known = self.local.known(signal.run_id) if self.local is not None else None
        # Only a state that has folded this schedule can tell it is no longer to be done
        # (another orchestrator may have scheduled it since this one last looked).
        if known is not None and known.head.seq >= signal.seq:
            if not _open(known, signal, body):
                await msg.ack()  # the run ended, or the outcome is recorded already
                return None
            if signal.run_id not in self._configs:
                self._remember_config(signal.run_id, dict(known.config))
        if await self._postponed(msg, signal, body):
            return None
        return signal, body

    async def _postponed(self, msg: Delivery, signal: Signal, body: PhaseScheduled) -> bool:
        """Whether the attempt's backoff delay has not passed yet; the message is then
        nak'ed to come back when it has (at most :data:`MAX_POSTPONE` later)."""
        # The backoff counts from the signal's time (the sender's clock), but never waits
        # longer than the delay itself: a clock ahead of ours must not stall the run.
        elapsed = (datetime.now(UTC) - signal.at).total_seconds()
        wait = min(body.delay, body.delay - elapsed)
        if wait > 0.005:
            await msg.nak(delay=min(wait, MAX_POSTPONE))
            return True
        return False

    async def _claim(
        self, msg: Delivery, signal: Signal, body: PhaseScheduled, secrets: dict[str, str]
    ) -> bool:
        """Report the attempt started; whether it is still to be done (its run going on,
        and it the current attempt of its phase or item). When not, the message is
        acknowledged: the run ended, or the work was redelivered after its outcome was
        recorded."""
        state = await self._report(self._report_of(signal, body, "started", secrets=secrets))
        # A local orchestrator's answer is the run's latest state: nothing to do when
        # the run ended or this attempt did (work redelivered after its outcome was
        # recorded). Otherwise ask the log, unless it was asked already.
        done = (
            not _open(state, signal, body)
            if state is not None
            else (self.local is not None and await self._ended(signal.run_id))
        )
        if done:
            await msg.ack()
            return False
        if state is not None and signal.run_id not in self._configs:
            self._remember_config(signal.run_id, dict(state.config))
        return True

    def _begin(self, msg: Delivery, signal: Signal, body: PhaseScheduled) -> _Attempt:
        """Start executing the attempt (:meth:`_execute`, in a task of its own) while
        telling JetStream it is in progress; :meth:`_finish` waits for it. Setting its
        ``cancel`` and cancelling its ``execution`` stops it."""
        event = threading.Event()
        written = AttemptLog(time.perf_counter)
        started = self._start_now(signal, body, event, written)
        execution = asyncio.create_task(
            self._execute(signal, body, event, written) if started is None else _ran(started)
        )
        running = self._running.setdefault(signal.run_id, {})
        running[execution] = event

        def close() -> None:
            beat.cancel()
            running.pop(execution, None)
            if not running and self._running.get(signal.run_id) is running:
                self._running.pop(signal.run_id, None)
            if not execution.done():
                execution.cancel()

        beat = _Heartbeat(self._heartbeat(msg), self.ack_wait / 3)
        return _Attempt(execution, event, written, close)

    async def _finish(
        self, attempt: _Attempt, signal: Signal, body: PhaseScheduled
    ) -> tuple[Outcome, Ended, str, LogRef]:
        """Wait for the attempt :meth:`_begin` started, and store its output and its log;
        the outcome, its status, the output's artifact (empty when there is no output)
        and the log's."""
        event, written, execution = attempt.cancel, attempt.written, attempt.execution
        try:
            outcome, timed_out = await asyncio.shield(execution)
        except asyncio.CancelledError:
            if not event.is_set():
                execution.cancel()
                raise  # this worker is stopping, not the run: not an outcome
            self.cancelled_attempts += 1
            log.warning(
                "run %s ended (cancelled or failed): stopped %s (attempt %s)",
                signal.run_id,
                signal.phase if body.item is None else f"{signal.phase}[{body.item}]",
                signal.attempt,
            )
            error = ErrorInfo(kind="Cancelled", message=f"run {signal.run_id} ended")
            outcome, timed_out = Outcome(status="failed", error=error), False
            written.add("WARNING", f"stopped: run {signal.run_id} ended (cancelled or failed)")
        finally:
            attempt.close()
        artifact = await self.bus.artifacts.put(outcome.output) if outcome.output else ""
        status: Ended = "timed_out" if timed_out else outcome.status
        if timed_out or (outcome.error is not None and outcome.error.kind == "ResourceExhausted"):
            written.add("ERROR", outcome.error.message if outcome.error else "timed out")
        return outcome, status, artifact, await self._store_log(written)

    async def _store_log(self, written: AttemptLog) -> LogRef:
        """Store the attempt's log (when it wrote anything); what its outcome names."""
        data = written.render()
        if not data:
            return LogRef()
        return LogRef(await self.bus.artifacts.put(data), written.lines, written.dropped)

    async def _settle(self, msg: Delivery, signal: Signal, status: Ended, outcome: Outcome) -> None:
        """Acknowledge the work once its outcome is reported, and count the attempt."""
        failpoint("worker.before_ack")
        await msg.ack()
        metrics.record_attempt(
            signal.pipeline,
            signal.phase,
            status,
            outcome.duration,
            outcome.contracts,
            outcome.invariants,
        )
        self.completed += 1

    async def _refuse(
        self, msg: Delivery, signal: Signal, body: PhaseScheduled, check: SignatureCheck
    ) -> None:
        """Refuse a scheduled phase whose signature is missing, invalid or untrusted.

        The phase function is not called and no input is read. The refusal is logged
        (what was wrong, the fix) and counted (``sisas.worker.refused``), then reported
        like work that cannot be done (:meth:`_give_up`): a failed attempt, not
        retryable, whose error is that message. The orchestrator records it in the log
        (``phase_failed``, signed) where ``sisas show``, the dashboard and auditors see
        it, and the run fails if the phase is fatal: its log holds a signal no trusted
        key signed, so its result cannot be trusted, and a retry would have the
        orchestrator sign work it never decided. A report the run cannot take (a run
        no orchestrator started) is rejected and recorded on ``sisas.in._._.rejected``;
        the forged signal itself stays in the log, where ``sisas replay verify`` names
        it. The message is then terminated: redelivering it would refuse it again, so
        it is never retried and never stops the worker. A report that cannot be sent
        (the server is away) is retried like any other (the message is nak'ed).
        """
        log.error("refused the work at log seq %s: %s", log_seq(msg), check.message)
        metrics.record_refused(signal.pipeline, signal.phase, check.status)
        self.refused += 1
        why = f"the worker {self.name} refused this attempt: {check.message}"
        error = ErrorInfo(
            kind="HardFailure",
            message=why[:1000],
            retryable=False,
            detail=f"signature {check.status}" + (f" by {check.signer}" if check.signer else ""),
        )
        failed = Outcome(status="failed", error=error)
        await self._report(self._report_of(signal, body, "failed", failed))
        await msg.term()

    async def _ended(self, run_id: str) -> bool:
        """Whether the run's last signal ends it (cancelled, failed elsewhere)."""
        last = await self.bus.log.last_of_run(run_id)
        return isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS

    async def _heartbeat(self, msg: Delivery) -> None:
        while True:
            with contextlib.suppress(Exception):
                await msg.in_progress()
            await asyncio.sleep(self.ack_wait / 3)

    async def _execute(
        self, signal: Signal, body: PhaseScheduled, cancel: threading.Event, written: AttemptLog
    ) -> tuple[Outcome, bool]:
        """Run the attempt on its inputs: in a child process when the phase is isolated
        (and the pipeline has a source), else in a thread of this one; the outcome and
        whether the attempt timed out. Inputs that cannot be read are a failed outcome."""
        pipe = self.pipelines[signal.pipeline]
        inputs = await self._inputs(body)
        if isinstance(inputs, Outcome):
            return inputs, False
        spec = pipe.phases.get(signal.phase)
        try:
            secrets = resolve_secrets(spec.secrets if spec else [], worker=f"worker {self.name}")
        except MissingSecret as exc:
            error = ErrorInfo(kind="HardFailure", message=str(exc), retryable=False)
            return Outcome(status="failed", error=error), False
        kwargs = _attempt_kwargs(signal, body, await self._config(signal), secrets)
        if spec is not None and spec.isolated and pipe.source:
            return await self.isolation.run(
                pipe,
                signal.phase,
                inputs,
                timeout=spec.timeout,
                memory_limit=spec.memory_limit,
                kwargs=kwargs,
                log=written,
            )
        return await self._submit_here(pipe, signal, body, inputs, kwargs, cancel, written), False

    def _start_now(
        self, signal: Signal, body: PhaseScheduled, cancel: threading.Event, written: AttemptLog
    ) -> asyncio.Future[Outcome] | None:
        """The attempt started in a phase thread at once, when nothing is to be waited for
        (its inputs in memory, its run's configuration known, its secrets resolved, no
        child process needed): its outcome to come. None otherwise, and
        :meth:`_execute` does it. The phase then starts before anything else queued on
        the event loop runs (the report of the attempt before it, say)."""
        pipe = self.pipelines.get(signal.pipeline)
        config = self._configs.get(signal.run_id)
        if pipe is None or config is None:
            return None
        spec = pipe.phases.get(signal.phase)
        if spec is not None and spec.isolated and pipe.source:
            return None
        inputs = self._inputs_now(body)
        if inputs is None:
            return None
        try:
            secrets = resolve_secrets(spec.secrets if spec else [], worker=f"worker {self.name}")
        except MissingSecret:
            return None  # :meth:`_execute` reports it
        kwargs = _attempt_kwargs(signal, body, config, secrets)
        return self._submit_here(pipe, signal, body, inputs, kwargs, cancel, written)

    def _inputs_now(self, body: PhaseScheduled) -> PhaseInputs | None:
        """The attempt's inputs when every one is held in memory (and is a digest)."""
        recent = self.bus.artifacts.recent
        values: dict[str, bytes] = {}
        for name, digest in body.inputs.items():
            data = recent(digest) if _DIGEST.match(digest) else None
            if data is None:
                return None
            values[name] = data
        gathered: dict[str, list[bytes]] = {}
        for name, digests in body.gathered.items():
            items: list[bytes] = []
            for digest in digests:
                data = (recent(digest) if _DIGEST.match(digest) else None) if digest else b"null"
                if data is None:
                    return None
                items.append(data)
            gathered[name] = items
        return PhaseInputs(values=values, gathered=gathered)

    async def _inputs(self, body: PhaseScheduled) -> PhaseInputs | Outcome:
        """The bytes of the attempt's inputs from the object store; a failed outcome when
        one is not an artifact digest (not retryable) or is not stored (retryable)."""
        named = [*body.inputs.values(), *(a for v in body.gathered.values() for a in v if a)]
        for digest in named:
            if not _DIGEST.match(digest):
                message = f"input {digest[:80]!r} is not an artifact digest"
                error = ErrorInfo(kind="HardFailure", message=message, retryable=False)
                return Outcome(status="failed", error=error)
        try:
            return PhaseInputs(
                values={k: await self.bus.artifacts.get(v) for k, v in body.inputs.items()},
                gathered={
                    k: [await self.bus.artifacts.get(a) if a else b"null" for a in v]
                    for k, v in body.gathered.items()
                },
            )
        except ArtifactNotFound as exc:
            return Outcome(
                status="failed",
                error=ErrorInfo(kind="HardFailure", message=str(exc), retryable=True),
            )

    def _submit_here(
        self,
        pipe: Pipeline,
        signal: Signal,
        body: PhaseScheduled,
        inputs: PhaseInputs,
        kwargs: dict[str, Any],
        cancel: threading.Event,
        written: AttemptLog,
    ) -> asyncio.Future[Outcome]:
        """Run the attempt in a thread of :attr:`threads` (an idle one, else a new one),
        its progress published on the run's live subject, what it prints kept in its
        log. Daemon threads, never bounded: an attempt abandoned because its run was
        cancelled keeps its thread and never keeps the process from exiting
        (:mod:`sisas.services.phase_threads`)."""
        loop = asyncio.get_running_loop()
        subject = live_subject(signal.run_id)

        def progress(fraction: float, message: str) -> None:
            payload = json.dumps(
                {"phase": signal.phase, "item": body.item, "fraction": fraction, "message": message}
            ).encode()
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(
                    lambda: asyncio.ensure_future(self.bus.wire.publish(subject, payload))
                )

        done: asyncio.Future[Outcome] = loop.create_future()

        def attempt() -> None:
            try:
                with routed_output(written):
                    outcome = execute_phase(
                        pipe,
                        signal.phase,
                        inputs,
                        progress=progress,
                        clock=time.perf_counter,
                        cancel=cancel,
                        log=written,
                        **kwargs,
                    )
            except BaseException as exc:  # execute_phase reports failures; this is a bug
                _hand_back(loop, done, None, exc)
            else:
                _hand_back(loop, done, outcome, None)

        self.threads.submit(attempt)
        return done

    async def _config(self, signal: Signal) -> dict[str, Any]:
        """The run's resolved configuration (from its run_started signal), cached."""
        if signal.run_id not in self._configs:
            config: dict[str, Any] = {}
            rec = await self.bus.log.first_of_kind(signal.run_id, "run_started")
            if isinstance(rec, StoredSignal) and isinstance(rec.signal.body, RunStarted):
                config = dict(rec.signal.body.config)
            self._remember_config(signal.run_id, config)
        return self._configs[signal.run_id]

    def _remember_config(self, run_id: str, config: dict[str, Any]) -> None:
        if len(self._configs) > 1000:
            self._configs.clear()
        self._configs[run_id] = config

    async def _report(self, report: PhaseReport) -> RunState | None:
        """Send ``report`` (:meth:`_report_of`); return the run's latest state when a
        local orchestrator decided it, None when it was published to ``SISAS_IN``."""
        if self.local is not None:
            state = await self.local.submit(report)
            if state is not None:
                return state
        await self.bus.inputs.publish(report)
        return None

    def _report_of(
        self,
        signal: Signal,
        body: PhaseScheduled,
        status: Literal["started", "completed", "failed", "timed_out"],
        outcome: Outcome | None = None,
        artifact: str = "",
        secrets: dict[str, str] | None = None,
        written: LogRef | None = None,
    ) -> PhaseReport:
        """The report of ``status`` on the attempt ``signal`` schedules."""
        item = "-" if body.item is None else str(body.item)
        out = outcome or Outcome(status="completed")
        return PhaseReport(
            # A takeover after a lost worker must show in the log, so "started" names the
            # worker; outcomes do not, so two workers finishing one attempt dedup to one.
            id=f"{signal.run_id}:{signal.phase}:{item}:{signal.attempt}:{status}"
            + (f":{self.name}" if status == "started" else ""),
            pipeline=signal.pipeline,
            run_id=signal.run_id,
            at=datetime.now(UTC),
            phase=signal.phase,
            attempt=signal.attempt,
            status=status,
            worker=self.name,
            environment=self._environments.get(signal.pipeline, "") if status == "started" else "",
            secrets=secrets or {},
            item=body.item,
            output_digest=out.output_digest,
            artifact=artifact,
            item_count=out.item_count,
            duration=out.duration,
            error=out.error,
            contracts=out.contracts,
            invariants=out.invariants,
            log=written.digest if written else "",
            log_lines=written.lines if written else 0,
            log_dropped=written.dropped if written else 0,
        )
