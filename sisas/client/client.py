"""The client: what a program does with a sisas bus.

Start runs, follow them, wait for their results, cancel them, read their outputs, ask
the query service. The CLI, the trigger service, batch and the tests request runs
through :meth:`Client.start` (the one place a ``start_run`` is sent from)::

    async with await Client.connect() as client:      # the data folder's server, or SISAS_NATS_URL
        handle = await client.start("clustering", {"points": [[0, 1], [2, 3]]}, seed=7)
        result = await handle.result(timeout=60)       # RunFailedError if it failed
        clusters = await client.output(handle.run_id, "cluster")

Settings are the CLI's (:meth:`sisas.bus.settings.Settings.from_env`): ``SISAS_HOME``
or the nearest ``.sisas``, ``SISAS_NATS_URL``, credentials. A client that finds no
server starts the embedded one for its own lifetime; pass ``pipelines=`` to
:meth:`Client.connect` to also run the orchestrator and a worker for that code while it
is connected (as ``sisas run CODE`` does), else requests wait for ``sisas up``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import msgspec

from sisas.bus.artifacts import bytes_digest
from sisas.bus.inputs import publish_start
from sisas.bus.limits import LimitCache
from sisas.bus.ports import Ports
from sisas.bus.presence import orchestrator_live, worker_live
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.client.handle import RunHandle
from sisas.client.logs import AttemptLogEntry, attempt_logs
from sisas.client.queries import Answer, ask
from sisas.client.resume import Resume, prepare_resume
from sisas.client.starting import check_settings, refuse_another_run, run_id_for
from sisas.errors import ArtifactNotFound, SisasError, UsageError
from sisas.handlers import binary
from sisas.handlers.state import RunState, fold
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.services.host import running_services
from sisas.services.hosting import check_live_code
from sisas.signals import RunRequested, Scalar, StoredSignal, check_name
from sisas.signals.inputs import CancelRun, StartRun
from sisas.signals.kinds import ENDING_KINDS
from sisas.signals.names import admit_cancel_subject, check_tags
from sisas.signals.plan import PipelinePlan
from sisas.telemetry.tracing import run_span, span_in_run

if TYPE_CHECKING:
    from sisas.client.backfills import BackfillProgress, BackfillReport
    from sisas.handlers.schedules import Schedule

__all__ = ["Client", "Started"]


@dataclass(frozen=True)
class Started:
    """What :meth:`Client.request` did: the run, and whether this call asked for it."""

    handle: RunHandle
    seed: int
    input_digest: str
    existing: RunRequested | None = None
    """The run an idempotency key named already (nothing was sent), else None."""
    duplicate: bool = False
    """The same start was sent moments ago and waits for an orchestrator (nothing new)."""
    resume: Resume | None = None


class Client:
    """A connection to a sisas bus. Use :meth:`connect`, or wrap a :class:`Bus` that is
    already open (the client then neither owns nor closes it)."""

    def __init__(self, bus: Ports, *, requested_by: str = "python client") -> None:
        self.bus = bus
        self.requested_by = requested_by
        self._limits = LimitCache(bus) if isinstance(bus, Bus) else None
        """Concurrency limits live in a KV bucket: none on in-memory ports."""
        self._stack: contextlib.AsyncExitStack | None = None
        self._served: dict[str, Pipeline] = {}
        """Pipelines whose code this client was connected with."""

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        pipelines: Mapping[str, Pipeline] | Iterable[str] | None = None,
        name: str = "sisas-client",
        requested_by: str = "python client",
    ) -> Client:
        """Open the bus the settings name (from the environment by default).

        ``pipelines``: code (loaded pipelines, or specs as ``--pipelines`` takes them)
        this client serves while connected: on a server it started itself, an
        orchestrator and a worker run in it; on a shared one, a worker for each pipeline
        no live worker runs. Raises :class:`~sisas.errors.BusUnavailable` (and the other
        errors of :func:`~sisas.bus.runtime.open_bus`) naming the fix.
        """
        code = _loaded(pipelines)  # a broken pipeline fails here, before any server starts
        stack = contextlib.AsyncExitStack()
        try:
            bus = await stack.enter_async_context(
                open_bus(settings or Settings.from_env(), name=name)
            )
            if bus.server is not None:
                await stack.enter_async_context(running_services(bus, code))
            else:
                for name in code:  # a live worker with other code would run the runs
                    await check_live_code(bus, name, code)
                unserved = {n: p for n, p in code.items() if not await worker_live(bus.wire, n)}
                if unserved:
                    await stack.enter_async_context(
                        running_services(bus, unserved, orchestrator=False)
                    )
        except BaseException:
            await stack.aclose()
            raise
        client = cls(bus, requested_by=requested_by)
        client._stack = stack
        client._served = code
        return client

    async def close(self) -> None:
        """Close what :meth:`connect` opened (the bus, a server it started, the services
        it ran); a client around a borrowed bus closes nothing."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- starting -------------------------------------------------------------------

    async def start(
        self,
        pipeline: str,
        input: Any = None,
        *,
        input_bytes: bytes | None = None,
        seed: int | None = None,
        config: Mapping[str, Scalar] | None = None,
        idempotency_key: str | None = None,
        batch_id: str = "",
        resume_of: str = "",
        from_phase: str = "",
        code: Pipeline | None = None,
        requested_by: str | None = None,
        at: datetime | None = None,
        run_id: str | None = None,
        trace: Mapping[str, str | int] | None = None,
        root_span: bool = True,
        check_plan: bool = True,
        tags: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> RunHandle:
        """Request a run of ``pipeline``; return its handle at once (the run goes on in
        the orchestrator and the workers: :meth:`RunHandle.result` waits for it).

        See :meth:`request` for the arguments and errors; this is its handle.
        """
        started = await self.request(
            pipeline,
            input,
            input_bytes=input_bytes,
            seed=seed,
            config=config,
            idempotency_key=idempotency_key,
            batch_id=batch_id,
            resume_of=resume_of,
            from_phase=from_phase,
            code=code,
            requested_by=requested_by,
            at=at,
            run_id=run_id,
            trace=trace,
            root_span=root_span,
            check_plan=check_plan,
            tags=tags,
            priority=priority,
        )
        return started.handle

    async def request(
        self,
        pipeline: str,
        input: Any = None,
        *,
        input_bytes: bytes | None = None,
        seed: int | None = None,
        config: Mapping[str, Scalar] | None = None,
        idempotency_key: str | None = None,
        batch_id: str = "",
        resume_of: str = "",
        from_phase: str = "",
        code: Pipeline | None = None,
        requested_by: str | None = None,
        at: datetime | None = None,
        run_id: str | None = None,
        trace: Mapping[str, str | int] | None = None,
        root_span: bool = True,
        check_plan: bool = True,
        tags: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> Started:
        """Request a run of ``pipeline`` and say what was done.

        ``input``: any JSON-able value (encoded as JSON), or ``input_bytes``: the bytes
        of a JSON document as they are (their digest is the run's input digest).
        ``seed``: None draws one. ``config``: keys phases read as ``ctx.config``
        (``PHASE.enabled`` switches a phase). ``idempotency_key``: the same key names
        the same run: a second request with it sends nothing and returns that run,
        or raises :class:`~sisas.errors.UsageError` when its input or configuration
        differ. ``resume_of`` and ``from_phase``: a new run reusing the verified
        outputs of ``resume_of``'s phases before ``from_phase`` (its input, seed and
        configuration unless given; no ``from_phase``: from its first phase without an
        output, "re-execute from failure"). ``code``: the pipeline's code when this process
        has it (its plan then checks ``config``, and a resume verifies with it).
        ``run_id``: the id to give the run (default: derived from the key, else fresh).
        ``trace``: attributes of the run's root span, which covers the request, unless
        ``root_span`` is False (the caller holds the run's root span already).
        ``check_plan`` False: send the request whether or not a worker registered the
        pipeline (a trigger does: the run then fails in the log, naming the fix).
        ``tags``: labels recorded in the run's ``run_requested`` (``runs(tags=...)``
        filters by them); keys and values are short strings (see :func:`check_tags`).
        ``priority``: when the pipeline has a concurrency limit (``sisas limits set``),
        the request waits for a slot, higher priorities first.

        Raises :class:`~sisas.errors.UsageError` for an unknown pipeline (listing the
        known ones), a configuration the plan refuses, an input that is not JSON.
        """
        check_name(pipeline, "pipeline name")
        code = code or self._served.get(pipeline)
        settings = dict(config or {})
        if code is not None or check_plan:
            plan = code.plan() if code is not None else await self._registered(pipeline)
            check_settings(settings, plan, how="config key ")
        resume = None
        if resume_of:
            resume = await prepare_resume(self.bus, pipeline, resume_of, from_phase, code)
            settings = {**resume.config, **settings}
        data = _input_bytes(input, input_bytes)
        reuse_input = resume is not None and input is None and input_bytes is None
        digest = resume.input_digest if resume is not None and reuse_input else bytes_digest(data)
        run_id = run_id or run_id_for(pipeline, idempotency_key)
        check_name(run_id, "run id")
        handle = RunHandle(self, run_id, pipeline)
        if idempotency_key:
            existing = await _requested(self.bus, run_id)
            if existing is not None:
                given = input is not None or input_bytes is not None
                refuse_another_run(run_id, idempotency_key, existing, digest, given, settings)
                chosen = existing.seed if existing.seed is not None else 0
                return Started(handle, chosen, existing.input_digest, existing=existing)
        if seed is None:
            seed = resume.seed if resume is not None else secrets.randbelow(2**31)
        who = requested_by or self.requested_by
        attributes = {"sisas.seed": seed, "sisas.requested_by": who, **(trace or {})}
        span = (
            run_span(f"run {pipeline}", run_id, pipeline, attributes)
            if root_span
            else contextlib.nullcontext()
        )
        with span:
            if not reuse_input:
                await self.bus.artifacts.put(data)
            published = await publish_start(
                self.bus.inputs,
                pipeline,
                run_id,
                input_digest=digest,
                seed=seed,
                at=at or datetime.now(UTC),
                config=settings,
                requested_by=who,
                idempotency_key=idempotency_key or "",
                resume_of=resume_of,
                resume_from_phase=resume.from_phase if resume is not None else "",
                reuse=resume.reuse if resume is not None else {},
                batch_id=batch_id,
                tags=check_tags(tags or {}),
                priority=priority,
                admit=self._limits is not None
                and await self._limits.admits(pipeline, dict(tags or {})),
            )
        if published.duplicate and idempotency_key:
            # The same key was sent moments ago and its run is not in the log yet: the
            # stored request, not this one, decides. Refuse what it would drop silently.
            first = await self.bus.inputs.stored(published.seq)
            if isinstance(first, StartRun):
                asked = RunRequested(
                    input_digest=first.input_digest, config=dict(first.config), seed=first.seed
                )
                given = input is not None or input_bytes is not None
                refuse_another_run(run_id, idempotency_key, asked, digest, given, settings)
                seed = first.seed
        return Started(handle, seed, digest, duplicate=published.duplicate, resume=resume)

    async def _registered(self, pipeline: str) -> PipelinePlan:
        """The plan a worker registered for ``pipeline``; UsageError when none did, or
        when nothing but this client could run it (it started the server)."""
        if isinstance(self.bus, Bus) and self.bus.server is not None:
            served = ", ".join(await self.bus.plans.names()) or "none"
            raise UsageError(
                f"no server runs for this data folder, and this client does not serve "
                f"{pipeline!r} (registered: {served}): pass its code, "
                "Client.connect(pipelines=[CODE]), or start `sisas up --pipelines CODE` and "
                "connect to it"
            )
        registry = self.bus.plans
        plan = await registry.get(pipeline)
        if plan is None:
            known = ", ".join(await registry.names()) or "none"
            raise UsageError(
                f"unknown pipeline {pipeline!r} (registered: {known}): start a worker "
                "with its code (`sisas up --pipelines CODE`, `sisas worker --pipelines "
                "CODE`), or connect with Client.connect(pipelines=[CODE])"
            )
        return plan

    async def backfill(
        self,
        pipeline: str,
        *,
        partitions: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        every: str = "",
        timezone: str = "UTC",
        schedule: Schedule | None = None,
        input: Any = "$",
        config: Mapping[str, Scalar] | None = None,
        seed: int | None = None,
        tags: Mapping[str, str] | None = None,
        max_concurrent: int = 0,
        rerun_all: bool = False,
        name: str = "",
        priority: int = 0,
        code: Pipeline | None = None,
        on_progress: Callable[[BackfillProgress], None] | None = None,
    ) -> BackfillReport:
        """Run one round of a backfill of ``pipeline`` and return its report when every
        partition's run has ended (``report.ok``: none failed or was cancelled).

        Partitions: listed keys (``partitions``), or the windows ``[tick, next tick)``
        of ``every`` (``1h``, ``1d``, ``15m``, a cron expression) or of ``schedule``'s
        cron, from ``start`` to ``end`` in ``timezone``. ``input``: a template whose
        ``$`` paths are filled from the partition (``$.partition``, ``$.window.start``,
        ``$.window.end``, ``$.date``…; docs/schedules.md). At most ``max_concurrent``
        of the backfill's runs are not ended at once (0: no limit). The backfill's id
        derives from the pipeline and the partition keys (``name``: ``bf-NAME``);
        asking again runs only the partitions with no completed run (``rerun_all``:
        every one), and joins a round still going (a restart) rather than starting
        anything twice. Every decision is a signal in the chain of the backfill's id.
        Raises :class:`~sisas.errors.UsageError` naming what is wrong.
        """
        from sisas.client.backfills import drive_backfill, plan_backfill

        plan = plan_backfill(
            pipeline,
            partitions=partitions,
            start=start,
            end=end,
            every=every,
            timezone=timezone,
            schedule=schedule,
            input=input,
            config=config,
            seed=seed,
            tags=tags,
            max_concurrent=max_concurrent,
            rerun_all=rerun_all,
            name=name,
            priority=priority,
            code=code or self._served.get(pipeline),
        )
        return await drive_backfill(self, plan, on_progress=on_progress)

    # -- following, cancelling, reading ---------------------------------------------

    def handle(self, run_id: str) -> RunHandle:
        """A handle on a run started elsewhere (its pipeline is read from its log)."""
        return RunHandle(self, check_name(run_id, "run id"), "")

    def _cancel_input(self, pipeline: str, run_id: str, reason: str) -> CancelRun:
        return CancelRun(
            id=f"cancel:{run_id}",
            pipeline=pipeline,
            run_id=run_id,
            at=datetime.now(UTC),
            reason=reason,
            requested_by=self.requested_by,
        )

    async def cancel(
        self, run_id: str, reason: str = "cancelled by the client", *, pipeline: str = ""
    ) -> bool:
        """Ask for ``run_id`` to be cancelled (no phase starts after the orchestrator
        records it). Returns False when the run had ended already. A run waiting for a
        slot under a concurrency limit leaves the queue (``run_withdrawn`` in its
        pipeline's admission chain) and its log records it requested and cancelled,
        its slot never taken. A run requested moments ago may not be in the log yet:
        given its ``pipeline`` (a handle knows it), the cancellation is queued behind
        the request. Raises :class:`~sisas.errors.UsageError` when the log has no such
        run, no queue holds it and no pipeline is given."""
        last = await self.bus.log.last_of_run(check_name(run_id, "run id"))
        if isinstance(last, StoredSignal):
            if last.signal.kind in ENDING_KINDS:
                return False
            pipeline = last.signal.pipeline
        else:
            queued = await self._queued_in(run_id, pipeline)
            if queued:
                await self.bus.inputs.publish(
                    self._cancel_input(queued, run_id, reason),
                    subject=admit_cancel_subject(queued, run_id),
                )
                return True
        if not pipeline:
            raise UsageError(f"no run {run_id!r} in this log: check the run id")
        with span_in_run("cancel", run_id, pipeline, {"sisas.reason": reason}):
            await self.bus.inputs.publish(self._cancel_input(pipeline, run_id, reason))
        return True

    async def _queued_in(self, run_id: str, pipeline: str) -> str:
        """The limited pipeline whose admission queue ``run_id`` waits in ("" if none)."""
        if not isinstance(self.bus, Bus):
            return ""
        from sisas.bus.limits import limits
        from sisas.handlers.admission import TAGS_CHAIN
        from sisas.services.admission import admission_state, chain_state

        for name in [pipeline] if pipeline else sorted(await limits(self.bus, cleared=True)):
            state, _ = await admission_state(self.bus, name)
            if state.waiting_of(run_id) is not None:
                return name
        waiting = (await chain_state(self.bus, TAGS_CHAIN))[0].waiting_of(run_id)
        return waiting.pipeline if waiting is not None else ""

    async def stalled(self, pipeline: str, state: RunState | None) -> str:
        """What keeps a run from moving, as a clause (``: no orchestrator is running…``),
        or "" when nothing is known to: no live orchestrator while it is not in the log,
        no live worker of its pipeline while it runs."""
        try:
            if (state is None or state.status == "new") and not await orchestrator_live(
                self.bus.wire
            ):
                return (
                    ": no orchestrator is running, so the request waits in SISAS_IN (start "
                    "`sisas up`, or connect with Client.connect(pipelines=[CODE]) when no "
                    "server runs)"
                )
            if pipeline and not await worker_live(self.bus.wire, pipeline):
                return (
                    f": no live worker runs {pipeline} (start `sisas worker --pipelines "
                    "CODE`, or `sisas up --pipelines CODE`)"
                )
        except SisasError:
            return ""
        return ""

    async def state(self, run_id: str) -> RunState:
        """The run's state folded from its log now (status ``new``: no such run yet)."""
        records = await self.bus.log.read_run(check_name(run_id, "run id"))
        signals = [r.signal for r in records if isinstance(r, StoredSignal)]
        return fold(signals) if signals else RunState.new("", run_id)

    async def output_bytes(self, run_id: str, phase: str, *, item: int | None = None) -> bytes:
        """The bytes of ``phase``'s output in ``run_id`` as stored, verified against their
        digest: JSON, ``.npy`` for a numpy array, an Arrow IPC file for a table (read
        them with ``numpy.load`` or ``pyarrow.ipc.open_file``). A fan-out phase: a JSON
        list of its items' outputs, or the one ``item`` (required when its items are
        arrays or tables, each stored on its own). Raises
        :class:`~sisas.errors.UsageError` when the phase has no output (yet)."""
        return await self._output_bytes(await self.state(run_id), phase, item)

    async def _output_bytes(self, state: RunState, phase: str, item: int | None) -> bytes:
        run_id = state.run_id
        ps = state.phases.get(phase)
        if ps is None:
            phases = ", ".join(state.phases) or "none"
            raise UsageError(f"run {run_id} has no phase {phase!r} (phases: {phases})")
        if ps.status == "skipped" and ps.skip_reason == "resumed":
            raise UsageError(f"{phase} of {run_id} was reused from {state.resume_of}: ask it")
        if ps.status != "completed":
            why = f"it is {ps.status}"
            if state.ended and ps.status in ("pending", "cancelled", "skipped"):
                ended = f"failed in {state.failed_phase}" if state.failed_phase else state.status
                why = f"it never ran to its end: the run {ended}"
                if ps.skip_reason:
                    why = f"it was skipped ({ps.skip_reason})"
            raise UsageError(f"{phase} of {run_id} has no output: {why}")
        if item is not None:
            if ps.items is None or not 0 <= item < ps.items:
                raise UsageError(f"{phase} of {run_id} has no item {item}")
            return await self._artifact(ps.item_states[item].artifact) or b"null"
        if ps.items is not None:
            parts = [await self._artifact(ps.item_states[i].artifact) for i in range(ps.items)]
            if any(p is not None and binary.format_of(p) != "json" for p in parts):
                raise UsageError(
                    f"the {ps.items} items of {phase} in {run_id} are arrays or tables, each "
                    "stored on its own: ask for one (item=N; `sisas output RUN PHASE --item "
                    "N`), or call output() for the list of them"
                )
            return b"[" + b",".join(p or b"null" for p in parts) + b"]"
        data = await self._artifact(ps.artifact)
        return data if data is not None else b"null"

    async def output(self, run_id: str, phase: str, *, item: int | None = None) -> Any:
        """``phase``'s output in ``run_id``, decoded (see :meth:`output_bytes`): JSON as
        Python data, a numpy array as an ndarray, a table as the phase returned it (a
        pandas DataFrame, or a pyarrow Table; a Table when pandas is missing here); a
        fan-out phase: the list of its items' outputs (None for a failed item of a
        partial one). Raises :class:`~sisas.errors.UsageError` when the phase has no
        output, or a table's output when pyarrow is missing here."""
        state = await self.state(run_id)
        ps = state.phases.get(phase)
        if item is None and ps is not None and ps.status == "completed" and ps.items is not None:
            parts = [await self._artifact(ps.item_states[i].artifact) for i in range(ps.items)]
            return [None if p is None else _decoded(p) for p in parts]
        return _decoded(await self._output_bytes(state, phase, item))

    async def small_outputs(self, run_id: str, *, max_bytes: int = 64 * 1024) -> dict[str, Any]:
        """The decoded outputs of ``run_id``'s completed phases that are not fanned out,
        are JSON and take at most ``max_bytes`` (the others, arrays and tables among
        them: :meth:`output`)."""
        state = await self.state(run_id)
        out: dict[str, Any] = {}
        for name, ps in state.phases.items():
            if ps.status == "completed" and ps.items is None and ps.artifact:
                data = await self._output_bytes(state, name, None)
                if len(data) <= max_bytes and binary.format_of(data) == "json":
                    out[name] = msgspec.json.decode(data)
        return out

    async def logs(
        self, run_id: str, phase: str | None = None, *, item: int | None = None
    ) -> list[AttemptLogEntry]:
        """The logs of ``run_id``'s attempts that ended, in log order (of ``phase``, of
        one ``item``), each with its text read from the store and checked against its
        digest. An attempt that wrote nothing has ``text`` "". Raises
        :class:`~sisas.errors.UsageError` for a run or phase that does not exist."""
        records = await self.bus.log.read_run(check_name(run_id, "run id"))
        signals = [r.signal for r in records if isinstance(r, StoredSignal)]
        if not signals:
            raise UsageError(f"no run {run_id!r} in this log: check the run id")
        state = fold(signals)
        if phase is not None and phase not in state.phases:
            phases = ", ".join(state.phases) or "none"
            raise UsageError(f"run {run_id} has no phase {phase!r} (phases: {phases})")
        entries = attempt_logs(signals, phase=phase, item=item)
        for entry in entries:
            await self.read_log(entry)
        return entries

    async def read_log(self, entry: AttemptLogEntry) -> AttemptLogEntry:
        """Fill ``entry.text`` from the store (checked against its digest)."""
        if entry.log:
            data = await self._artifact(entry.log)
            entry.text = (data or b"").decode(errors="replace")
        return entry

    async def _artifact(self, digest: str) -> bytes | None:
        if not digest:
            return None
        try:
            return await self.bus.artifacts.get(digest)
        except ArtifactNotFound:
            raise UsageError(
                f"artifact {digest} is no longer in the store: the output cannot be read"
            ) from None

    async def runs(
        self,
        *,
        pipeline: str = "",
        status: str = "",
        since: datetime | None = None,
        limit: int = 50,
        tags: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first, from the query service (the fields of ``sisas runs --json``);
        ``tags``: only the runs that carry each of them."""
        params: dict[str, Any] = {"limit": limit}
        if tags:
            params["tags"] = check_tags(tags)
        if pipeline:
            params["pipeline"] = pipeline
        if status:
            params["status"] = status
        if since is not None:
            params["since"] = since.isoformat()
        rows: list[dict[str, Any]] = (await self.ask("runs", params)).result
        return rows

    async def ask(self, verb: str, params: dict[str, Any] | None = None) -> Answer:
        """Any question the query service answers (``runs``, ``show``, ``manifest``,
        ``stats``…; docs/projections.md). A projector that runs answers; else this
        process folds the log into the data folder's projection and answers. Needs a
        server (a :class:`~sisas.bus.runtime.Bus`): in-memory ports have no projection."""
        if not isinstance(self.bus, Bus):
            raise UsageError(
                f"{verb}: queries read the projection of a data folder, and this client "
                "runs on in-memory ports; read runs with handle.result() or "
                "handle.signals(), or connect with Client.connect()"
            )
        return await ask(self.bus, verb, params)


def _decoded(data: bytes) -> Any:
    if binary.format_of(data) == "json":
        return msgspec.json.decode(data)
    try:
        return binary.decode(data)
    except binary.Unstorable as exc:
        raise UsageError(f"the output cannot be read here: {exc}") from None


def _loaded(pipelines: Mapping[str, Pipeline] | Iterable[str] | None) -> dict[str, Pipeline]:
    if pipelines is None:
        return {}
    if isinstance(pipelines, Mapping):
        return dict(pipelines)
    return load_pipelines(list(pipelines), entry_points=False)


def _input_bytes(value: Any, raw: bytes | None) -> bytes:
    if raw is not None:
        if value is not None:
            raise UsageError("pass the input as a value or as input_bytes, not both")
        try:
            msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise UsageError(f"the input is not JSON ({exc}): pass a JSON document") from None
        return raw
    try:
        return msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise UsageError(
            f"the input cannot be encoded as JSON ({exc}): pass dicts, lists, strings, "
            "numbers, booleans or None"
        ) from None


async def _requested(bus: Ports, run_id: str) -> RunRequested | None:
    """The ``run_requested`` of ``run_id`` when the log has the run, else None."""
    rec = await bus.log.first_of_kind(run_id, "run_requested")
    if isinstance(rec, StoredSignal) and isinstance(rec.signal.body, RunRequested):
        return rec.signal.body
    return None
