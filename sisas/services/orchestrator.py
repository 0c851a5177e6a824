"""The orchestrator shell: inputs in, decisions appended, then the input acknowledged.

It consumes ``SISAS_IN`` through the durable consumer ``orchestrator`` (any number of
orchestrators may share it), folds the run's state from the log (cached), calls the
pure :func:`sisas.handlers.orchestrator.decide`, and appends the signals with the run's
expected last sequence. On a conflict (another orchestrator appended first) it reloads
the run and decides again. An input is acknowledged only after its signals are in the
log, so a crash in between redelivers it, and deciding it again on the newer state
yields nothing new. Inputs that are not valid, or can never be valid for their run (a
report for an attempt never scheduled, signals too big for a message), are recorded as
rejected (subject ``sisas.in._._.rejected``, with the reason) and skipped; they never
stop the loop.

A worker in the same process hands its reports to :meth:`Orchestrator.submit` instead
of publishing them (the fast path, like Temporal's local activities): the report is
decided and its signals appended exactly as if it had come through ``SISAS_IN``, with
the run's expected last sequence, minus two trips through the server. The log stays the
only record that matters: the worker acknowledges its work only once the outcome's
signals are appended, so a crash in between redelivers the work, as it would today.

The other way round, such a worker takes the work this orchestrator commits without the
work queue when it has a slot free at that moment (*eager dispatch*, as Temporal's
eager activities): the attempt is handed over once its commit is acknowledged by the
log, so it is still never acted on before it is durable, and it costs no offer (an
fsync) and no pull. What makes it safe is a lease on the run: the ``SISAS_IN`` input
whose decision handed work over is not acknowledged (it is kept in progress) until
every attempt handed over for that run is settled. If this process dies, that input is
redelivered to another orchestrator after ``ack_wait``; deciding it again changes
nothing, so it re-offers the run's open attempts on ``SISAS_WORK`` (those scheduled,
and, as the input's redelivery says their holder is gone, those started). Work is
handed over only within such a lease; anything else is offered on ``SISAS_WORK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from nats.js.errors import NotFoundError
from opentelemetry.context import Context

from sisas.bus.inputs import REJECTED_SUBJECT
from sisas.bus.log import HEADERS_ROOM
from sisas.bus.ports import Delivery, Feed, Ports, closing_feed
from sisas.bus.presence import ORCHESTRATOR_SUBJECT
from sisas.bus.runtime import Bus
from sisas.errors import AppendConflict, SisasError
from sisas.faults import failpoint
from sisas.handlers.circuit import Circuit
from sisas.handlers.orchestrator import decide_full, rejection
from sisas.handlers.state import PhaseState, RunState, attempt_status, evolve
from sisas.security.keys import signer_from_file
from sisas.signals.codec import encode_signal
from sisas.signals.envelope import Signal
from sisas.signals.inputs import Input, PhaseReport, StartRun, decode_input
from sisas.signals.kinds import PhaseScheduled
from sisas.signals.names import LOG_STREAM, check_name, input_subject
from sisas.signals.plan import PipelinePlan
from sisas.signals.records import CorruptMessage, StoredSignal
from sisas.telemetry import metrics
from sisas.telemetry.tracing import current_context, enabled, inject, message_span, within

__all__ = ["REJECTED_SUBJECT", "Orchestrator"]

log = logging.getLogger("sisas.orchestrator")
CONSUMER = "orchestrator"
REOFFER_EVERY = 10.0
"""Seconds between two re-offers of one run's scheduled work (see :meth:`_reoffer`)."""
MAX_REASON = 500
"""Characters of a rejection's reason kept (it may quote a huge field of the input)."""


def _waiting(phase: PhaseState) -> bool:
    """Whether ``phase`` or one of its items may be scheduled and not started."""
    return phase.status in ("scheduled", "retrying", "running")


def _still_scheduled(state: RunState, signal: Signal, body: PhaseScheduled) -> bool:
    """Whether the attempt ``signal`` schedules is scheduled and not started in ``state``."""
    return attempt_status(state, signal, body) in ("scheduled", "retrying")


def _open_attempt(state: RunState, signal: Signal, body: PhaseScheduled) -> bool:
    """Whether the attempt ``signal`` schedules is still to be done: scheduled, or
    running on a worker (which, under log format 1, is gone)."""
    return attempt_status(state, signal, body) in ("scheduled", "retrying", "running")


Hand = Callable[[StoredSignal, dict[str, str]], Awaitable[bool]]
"""A local worker's door: offered an attempt just committed (and the trace headers to
continue), it takes it (True) when it has a slot free."""
_Waiting = tuple[Input, Context, Delivery | None, asyncio.Future[RunState]]
"""An input waiting for its run's next commit: its trace, its message (None when a local
worker submitted it), and its answer."""


class _Rejected(Exception):
    """The input decodes but can never be valid for its run (the reason is the message)."""


class Orchestrator:
    """Turns inputs into signals. Safe to run several at once against one server.

    Runs on :class:`~sisas.bus.ports.Ports`: a connected :class:`~sisas.bus.runtime.Bus`,
    or :func:`sisas.bus.memory.memory_ports` in one process.
    """

    def __init__(self, bus: Ports, *, cache_size: int = 10_000, ack_wait: float = 30.0) -> None:
        self.bus = bus
        self.registry = bus.plans
        self.registry.listen()  # a plan is read for every run started: keep it while current
        self.circuits = bus.circuits
        self._cache: OrderedDict[str, tuple[RunState, int]] = OrderedDict()
        self._cache_size = cache_size
        self._ack_wait = ack_wait
        self._pending: dict[str, list[_Waiting]] = {}
        self._committing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reoffered: OrderedDict[str, float] = OrderedDict()
        self._hands: dict[str, Hand] = {}
        """By pipeline: the worker in this process to hand attempts over to."""
        self._handed: dict[str, int] = {}
        """By run: attempts handed over and not settled yet."""
        self._held: dict[str, list[Delivery]] = {}
        """By run: the inputs held in progress while its handed attempts are unsettled."""
        self._beat: asyncio.Task[None] | None = None
        self.handed_over = 0
        """Attempts handed to a local worker without the work queue."""
        self.handled = 0
        self.handled_locally = 0
        """Reports decided through :meth:`submit`, without a trip through ``SISAS_IN``."""
        self.rejected = 0
        key = bus.settings.signing_key
        self.signer = signer_from_file(key) if key is not None else None
        """Signs every appended signal when ``SISAS_SIGNING_KEY`` names a key."""

    async def run(self, stop: asyncio.Event, *, batch: int = 64) -> None:
        """Consume inputs until ``stop`` is set, answering presence requests meanwhile
        (:mod:`sisas.bus.presence`: ``sisas run`` and ``sisas cancel`` ask)."""
        feed = await self.bus.inputs.consume(CONSUMER, ack_wait=self._ack_wait)
        await self.adopt_format1_work()
        about = {"orchestrator": f"{socket.gethostname()}-{os.getpid()}"}
        try:
            async with (
                closing_feed(feed),
                self.bus.wire.answering([ORCHESTRATOR_SUBJECT], about),
            ):
                await self._loop(feed, stop, batch)
        finally:
            if self._beat is not None:  # held inputs come back to whoever runs next
                self._beat.cancel()

    async def _loop(self, feed: Feed, stop: asyncio.Event, batch: int) -> None:
        while not stop.is_set():
            try:
                msgs = await feed.fetch(batch, timeout=0.25)
            except TimeoutError:
                continue
            except Exception as exc:  # server restarting, leader election
                log.warning("orchestrator fetch failed: %s; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            await self._handle_batch(msgs)

    async def _handle_batch(self, msgs: list[Delivery]) -> None:
        """Decide a fetched batch: each run's inputs in their stream order, into one
        commit per run, different runs at once, so their appends share the server's
        fsyncs instead of queueing behind each other."""

        # Every input of the batch is decided at once: those of one run queue in their
        # stream order and are decided together into one commit (see :meth:`apply`).
        await asyncio.gather(*(self._handle_safely(m) for m in msgs))

    async def _handle_safely(self, msg: Delivery) -> None:
        try:
            await self.handle(msg)
        except Exception as exc:  # never let one input stop the orchestrator
            log.exception(
                "input at stream seq %s failed; will retry: %s", msg.metadata.sequence.stream, exc
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def handle(self, msg: Delivery) -> None:
        """Decide one input and append its signals, then acknowledge it."""
        if msg.subject == REJECTED_SUBJECT:  # our own records
            await msg.ack()
            return
        try:
            inp = decode_input(msg.data)
            check_name(inp.pipeline, "pipeline name")
            check_name(inp.run_id, "run id")
            kind = str(type(inp).__struct_config__.tag)
            if msg.subject != input_subject(inp.pipeline, inp.run_id, kind):
                raise SisasError(f"an input for run {inp.run_id} arrived on {msg.subject}")
        except SisasError as exc:
            await self._reject(msg, str(exc))
            return
        try:
            await self._decide(inp, msg.headers, msg)
        except _Rejected as exc:
            await self._reject(msg, str(exc))
            return
        failpoint("orchestrator.before_ack")
        self.handled += 1
        if self._handed.get(inp.run_id):
            self._hold(inp.run_id, msg)  # the lease of the attempts handed over
            return
        await msg.ack()

    async def submit(self, report: PhaseReport) -> RunState | None:
        """Decide a report of a worker in this process at once, without ``SISAS_IN``.

        Returns the run's state once the report's signals are appended (or once it is
        known to change nothing on the run's latest state): the latest state, so the
        worker also learns whether the run ended. Returns None when it cannot be decided
        here (a rejection, a server error): the worker then publishes it to ``SISAS_IN``
        as usual, where it is decided, or rejected and recorded.
        """
        try:
            check_name(report.pipeline, "pipeline name")
            check_name(report.run_id, "run id")
            state = await self._decide(report, inject({}))
        except Exception as exc:  # the slow path decides it, or records why not
            log.info("report %s goes through SISAS_IN: %s", report.id, exc)
            return None
        self.handled_locally += 1
        return state

    async def submit_all(self, reports: Sequence[PhaseReport]) -> list[RunState | None]:
        """:meth:`submit` for reports to be decided together (a short attempt's start
        and outcome, into one commit): each one's answer, in their order. Without
        tracing they are queued at once, with no task each."""
        if enabled():  # a span for each decision, as :meth:`submit` makes
            return list(await asyncio.gather(*(self.submit(r) for r in reports)))
        waiting: list[asyncio.Future[RunState] | None] = []
        for report in reports:
            try:
                check_name(report.pipeline, "pipeline name")
                check_name(report.run_id, "run id")
            except SisasError as exc:
                log.info("report %s goes through SISAS_IN: %s", report.id, exc)
                waiting.append(None)
                continue
            waiting.append(self._queue(report))
        answers: list[RunState | None] = []
        for report, fut in zip(reports, waiting, strict=True):
            if fut is None:
                answers.append(None)
                continue
            try:
                answers.append(await fut)
            except Exception as exc:  # the slow path decides it, or records why not
                log.info("report %s goes through SISAS_IN: %s", report.id, exc)
                answers.append(None)
                continue
            self.handled_locally += 1
        return answers

    async def adopt_format1_work(self) -> int:
        """Offer on ``SISAS_WORK`` the work that sisas before commits left for its workers.

        Before commits, workers took ``phase_scheduled`` signals from the log itself,
        through one durable consumer per pipeline (``worker-<pipeline>`` on
        ``SISAS_LOG``). A run stopped mid-way under that code has scheduled attempts no
        input will ever re-offer. So at start, for each such consumer: read the log past
        its acknowledged floor, offer each scheduled attempt that its run's folded state
        shows still to be done (scheduled, or running on a worker that is gone), then
        delete the consumer. Idempotent: offers are deduplicated by signal id, and the
        next start finds no consumer. Returns the attempts offered."""
        if not isinstance(self.bus, Bus):  # only a JetStream log has such consumers
            return 0
        offered = 0
        for pipeline in await self.registry.names():
            name = f"worker-{pipeline}"
            try:
                info = await self.bus.js.consumer_info(LOG_STREAM, name)
            except NotFoundError:
                continue
            floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            runs: dict[str, list[StoredSignal]] = {}
            async for rec in self.bus.log.follow(from_seq=floor + 1):
                if (
                    isinstance(rec, StoredSignal)
                    and rec.of == 1
                    and rec.signal.pipeline == pipeline
                    and isinstance(rec.signal.body, PhaseScheduled)
                ):
                    runs.setdefault(rec.signal.run_id, []).append(rec)
            for run_id, scheduled in runs.items():
                state, _ = await self._load(pipeline, run_id)
                waiting = [
                    r
                    for r in scheduled
                    if isinstance(r.signal.body, PhaseScheduled)
                    and not state.ended
                    and _open_attempt(state, r.signal, r.signal.body)
                ]
                offered += await self.bus.work.offer(waiting)
            await self.bus.js.delete_consumer(LOG_STREAM, name)
            log.warning(
                "adopted the work of %s (log format 1): %d attempt(s) of %d run(s) offered "
                "on SISAS_WORK; its consumer is deleted",
                name,
                offered,
                len(runs),
            )
        return offered

    def host(self, pipelines: Iterable[str], hand: Hand) -> None:
        """A worker in this process takes work of ``pipelines``: ``hand`` offers it an
        attempt just committed, which it takes when it has a slot free."""
        for name in pipelines:
            self._hands[name] = hand

    def unhost(self, pipelines: Iterable[str]) -> None:
        """That worker stopped: the work of ``pipelines`` goes through the queue."""
        for name in pipelines:
            self._hands.pop(name, None)

    def release(self, run_id: str) -> None:
        """An attempt handed over is settled (its outcome appended, or it went back to
        the work queue); the run's held inputs are acknowledged once none is left."""
        left = self._handed.get(run_id, 0) - 1
        if left > 0:
            self._handed[run_id] = left
            return
        self._handed.pop(run_id, None)
        for msg in self._held.pop(run_id, []):
            self._spawn(self._ack_quietly(msg))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _ack_quietly(msg: Delivery) -> None:
        try:
            await msg.ack()
        except Exception as exc:  # redelivered then: deciding it again changes nothing
            log.info("could not acknowledge a held input: %s", exc)

    def _hold(self, run_id: str, msg: Delivery) -> None:
        """Keep ``msg`` in progress until the run's handed attempts are settled."""
        self._held.setdefault(run_id, []).append(msg)
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._holding())

    async def _holding(self) -> None:
        """Tell the server the held inputs are in progress, every third of ``ack_wait``."""
        while self._held:
            await asyncio.sleep(self._ack_wait / 3)
            for msgs in list(self._held.values()):
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    def known(self, run_id: str) -> RunState | None:
        """The run's state as this orchestrator last appended or read it (no I/O)."""
        cached = self._cache.get(run_id)
        return cached[0] if cached is not None else None

    async def _decide(
        self, inp: Input, headers: Mapping[str, str] | None, msg: Delivery | None = None
    ) -> RunState:
        kind = str(type(inp).__struct_config__.tag)
        attributes: dict[str, str | int] = {"sisas.input": kind}
        if isinstance(inp, PhaseReport):
            attributes.update(
                {
                    "sisas.phase": inp.phase,
                    "sisas.attempt": inp.attempt,
                    "sisas.report": inp.status,
                    "sisas.item": -1 if inp.item is None else inp.item,
                }
            )
        with message_span(f"decide {kind}", headers, inp.run_id, inp.pipeline, attributes) as span:
            state = await self.apply(inp, msg)
            span.set_attribute("sisas.run_status", state.status)
        return state

    async def apply(self, inp: Input, msg: Delivery | None = None) -> RunState:
        """Decide ``inp`` against the run's current log and append; return the new state.

        Raises ``_Rejected`` for an input that can never be valid for its run (another
        pipeline's run, a report for a run or an attempt that was never scheduled).
        Inputs of one run in this process are decided together (group commit): every
        input that arrives while the run's previous commit is being written waits for
        the next one, and all of them are decided in their order, on one state, into
        one commit (inputs from ``SISAS_IN`` and reports submitted by a local worker
        alike); other orchestrators are held off by the expected last sequence of each
        append.
        """
        return await self._queue(inp, msg)

    def _queue(self, inp: Input, msg: Delivery | None = None) -> asyncio.Future[RunState]:
        """Queue ``inp`` for the run's next commit (see :meth:`apply`); its answer."""
        fut: asyncio.Future[RunState] = asyncio.get_running_loop().create_future()
        queue = self._pending.setdefault(inp.run_id, [])
        queue.append((inp, current_context(), msg, fut))
        if len(queue) == 1 and inp.run_id not in self._committing:
            self._committing.add(inp.run_id)
            task = asyncio.create_task(self._commit_loop(inp.run_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fut

    async def _commit_loop(self, run_id: str) -> None:
        """Decide and append the run's waiting inputs, a group at a time, until none wait."""
        try:
            while self._pending.get(run_id):
                group = self._pending.pop(run_id)[:]
                try:
                    results = await self._apply_group(run_id, [(i, c, m) for i, c, m, _ in group])
                except Exception as exc:  # the whole group failed: each input hears why
                    results = [exc] * len(group)
                for (_, _, _, fut), result in zip(group, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            self._committing.discard(run_id)

    async def _apply_group(
        self, run_id: str, group: list[tuple[Input, Context, Delivery | None]]
    ) -> list[RunState | BaseException]:
        inputs = [inp for inp, _, _ in group]
        deliveries = [m for _, _, m in group if m is not None]
        pipeline = inputs[0].pipeline
        starts = any(isinstance(i, StartRun) for i in inputs)
        for tries in range(50):
            if starts:  # read the plan meanwhile
                # A run this process has not seen is taken to be new at first: the
                # append's fence (expected last seq 0) proves it, and a conflict or a
                # duplicate reloads it from the log and decides again.
                (state, last_seq), plan = await asyncio.gather(
                    self._load(pipeline, run_id, assume_new=tries == 0),
                    self.registry.get(pipeline),
                )
            else:
                (state, last_seq), plan = await self._load(pipeline, run_id), None
            if state.head.seq == 0:  # no signals yet: the run is the input's pipeline's
                state = RunState.new(pipeline, run_id)
            circuits = await self.circuits.get(pipeline)
            changed: dict[str, Circuit] = {}
            signals: list[Signal] = []
            results: list[RunState | BaseException | None] = []
            cause: Context | None = None  # the trace of the input that decided last
            for inp, ctx, _ in group:
                if state.head.seq and state.pipeline != inp.pipeline:
                    results.append(
                        _Rejected(
                            f"run {run_id} belongs to pipeline {state.pipeline}, not {inp.pipeline}"
                        )
                    )
                    continue
                plans: dict[str, PipelinePlan] = {}
                if plan is not None and state.status == "new" and plan.name == inp.pipeline:
                    plans[plan.name] = plan
                decision = decide_full(state, inp, plans, {**circuits, **changed})
                decided = decision.signals
                if self.signer is not None:
                    decided = [self.signer.sign(x) for x in decided]
                try:
                    self._check_sizes(decided)
                except _Rejected as exc:
                    results.append(exc)
                    continue
                if not decided:
                    results.append(None)  # nothing to do: true only of the latest state
                    continue
                state = decision.state  # a signature changes no state: signed or not
                signals += decided
                cause = ctx
                changed.update(decision.circuits)
                results.append(state)
            if not signals:
                # "Nothing to do" is only true of the latest state: another orchestrator
                # may have appended since we cached this run (say, the scheduling of the
                # item this report is about). Check before acknowledging the inputs.
                last = await self.bus.log.last_of_run(run_id)
                if (last.stream_seq if last else 0) != last_seq:
                    self._cache.pop(run_id, None)
                    continue
                # An input redelivered while no attempt of its run is handed over here
                # may be the lease of a process that died: its started attempts too.
                orphaned = not self._handed.get(run_id) and any(
                    m.metadata.num_delivered > 1 for m in deliveries
                )
                await self._reoffer(state, started=orphaned)
                return [self._settle(state, inp, r) for inp, r in zip(inputs, results, strict=True)]
            # Decisions of other runs taken while this one is being appended count from
            # it: a phase failing in many runs at once opens its circuit here as it would
            # one run after another (other orchestrators see it once it is stored).
            self.circuits.note(pipeline, changed)
            with within(cause):  # the commit and its work are the last cause's children
                try:
                    result = await self.bus.log.append(signals, expected_last_seq=last_seq)
                except AppendConflict:
                    self._cache.pop(run_id, None)  # someone else wrote: reload, decide again
                    continue
                if result.duplicates:  # decided on a stale state, and written before
                    self._cache.pop(run_id, None)  # (a redelivered start): reload
                    continue
                self._remember(run_id, state, result.last_seq)
                # A phase is offered before the items of a fan-out scheduled with it: a
                # phase beside a fan-out of thousands does not wait behind all of them.
                scheduled = [
                    StoredSignal(stream_seq=result.last_seq, signal=x)
                    for x in signals
                    if isinstance(x.body, PhaseScheduled)
                ]
                scheduled.sort(key=lambda x: getattr(x.signal.body, "item", None) is not None)
                leased = bool(deliveries) or bool(self._handed.get(run_id))
                if leased and pipeline in self._hands:
                    scheduled = await self._hand_over(run_id, pipeline, scheduled)
                await self.bus.work.offer(scheduled)
            await self.circuits.store(pipeline, changed)
            metrics.record_decision(pipeline, signals, changed)
            # The append proved ``state`` the latest: an input that changed nothing on it
            # is stale, a duplicate, or never valid.
            return [self._settle(state, inp, r) for inp, r in zip(inputs, results, strict=True)]
        raise SisasError(f"run {run_id}: gave up after 50 conflicting appends")

    async def _hand_over(
        self, run_id: str, pipeline: str, scheduled: list[StoredSignal]
    ) -> list[StoredSignal]:
        """Hand attempts just committed to the worker in this process while it has slots
        free (not those waiting out a backoff); the others, to offer on the queue."""
        hand = self._hands[pipeline]
        headers = inject({})
        rest: list[StoredSignal] = []
        for rec in scheduled:
            body = rec.signal.body
            assert isinstance(body, PhaseScheduled)
            if rest or body.delay > 0:
                rest.append(rec)
                continue
            self._handed[run_id] = self._handed.get(run_id, 0) + 1
            if await hand(rec, headers):
                self.handed_over += 1
            else:
                self._handed[run_id] -= 1
                if not self._handed[run_id]:
                    self._handed.pop(run_id)
                rest.append(rec)
        return rest

    def _settle(
        self, state: RunState, inp: Input, result: RunState | BaseException | None
    ) -> RunState | BaseException:
        """An input's answer: its state, its rejection, or (it changed nothing) the
        latest state, or why it can never be valid."""
        if isinstance(result, BaseException):
            return result
        if result is not None:
            return state  # the latest: a worker learns from it whether the run goes on
        reason = rejection(state, inp)
        return _Rejected(reason) if reason is not None else state

    async def _reoffer(self, state: RunState, *, started: bool = False) -> None:
        """Offer again the run's attempts that are scheduled and not started (and, with
        ``started``, those started and not ended).

        Called when an input changes nothing: the input may be redelivered because this
        or another orchestrator died between a commit and its offers, or because the
        process that held it as the lease of attempts handed over died (``started``:
        their outcome will never come). Offers are deduplicated by the scheduled
        signal's id; at most one re-offer per run every :data:`REOFFER_EVERY` seconds
        reads the run back."""
        if state.ended or not any(_waiting(p) for p in state.phases.values()):
            return
        now = asyncio.get_running_loop().time()
        if now - self._reoffered.get(state.run_id, -REOFFER_EVERY) < REOFFER_EVERY:
            return
        self._reoffered[state.run_id] = now
        while len(self._reoffered) > self._cache_size:
            self._reoffered.popitem(last=False)
        waiting = [
            rec
            for rec in await self.bus.log.read_run(state.run_id)
            if isinstance(rec, StoredSignal)
            and isinstance(rec.signal.body, PhaseScheduled)
            and (_open_attempt if started else _still_scheduled)(state, rec.signal, rec.signal.body)
        ]
        offered = await self.bus.work.offer(waiting)
        if offered:
            log.warning("run %s: %d scheduled attempt(s) offered again", state.run_id, offered)

    def _check_sizes(self, signals: list[Signal]) -> None:
        """Raise ``_Rejected`` if a signal would not fit in one message of the server: an
        input near the limit (a huge ``requested_by``, say) decides bigger signals."""
        room = self.bus.wire.max_payload - HEADERS_ROOM
        for s in signals:
            size = len(encode_signal(s))
            if size > room:
                raise _Rejected(
                    f"its {s.kind} signal would be {size} bytes, past the {room} bytes a "
                    "message may hold on this server (max payload less headers): send a "
                    "smaller input, or store large values as artifacts"
                )

    async def _load(
        self, pipeline: str, run_id: str, *, assume_new: bool = False
    ) -> tuple[RunState, int]:
        """The run's state and the stream seq of its last signal: cached, or folded from
        the log; with ``assume_new``, a run not cached is taken to have no signals yet
        (for a start: the append, fenced on seq 0, finds out)."""
        cached = self._cache.get(run_id)
        if cached is not None:
            self._cache.move_to_end(run_id)
            return cached
        if assume_new:
            return RunState.new(pipeline, run_id), 0
        records = await self.bus.log.read_run(run_id)
        state = RunState.new(
            records[0].signal.pipeline
            if records and isinstance(records[0], StoredSignal)
            else pipeline,
            run_id,
        )
        for rec in records:
            if isinstance(rec, StoredSignal):
                state = evolve(state, rec.signal)
            elif isinstance(rec, CorruptMessage):
                log.error(
                    "run %s: stream seq %d is corrupt (%s); folding without it",
                    run_id,
                    rec.stream_seq,
                    rec.reason,
                )
        last = records[-1].stream_seq if records else 0
        self._remember(run_id, state, last)
        return state, last

    def _remember(self, run_id: str, state: RunState, last_seq: int) -> None:
        self._cache[run_id] = (state, last_seq)
        self._cache.move_to_end(run_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _reject(self, msg: Delivery, reason: str) -> None:
        seq = msg.metadata.sequence.stream
        if len(reason) > MAX_REASON:
            reason = f"{reason[:MAX_REASON]}… ({len(reason)} characters)"
        log.warning("rejected input at SISAS_IN seq %d on %s: %s", seq, msg.subject, reason)
        await self.bus.inputs.record_rejection(seq, msg.subject, reason, len(msg.data))
        self.rejected += 1
        metrics.record_rejected()
        await msg.term()
