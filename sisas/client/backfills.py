"""Driving a backfill: the decisions of :mod:`sisas.handlers.backfills` appended to the
backfill's chain, and the runs they launch requested through the client.

:func:`drive_backfill` is what ``sisas backfill`` and :meth:`Client.backfill` run. Each
pass it:

1. reads the chain when it moved (another driver may append to it);
2. asks the log which of the backfill's runs have ended (a run, once ended, is not
   asked again);
3. requests the runs the current round launched that are not in the log yet (a driver
   that died between recording a launch and requesting it leaves it to the next one:
   the run id and idempotency key derive from the backfill, the partition and the
   attempt, so asking again starts nothing new);
4. appends the next decision (:func:`~sisas.handlers.backfills.decide_next`) with the
   chain's expected last sequence: of two drivers, the first append wins and the other
   reads it.

The limit of runs at once is counted from the log (launched runs whose log has not
ended), not from this process's memory, so two drivers of one backfill share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from nats.errors import Error as NatsError

from sisas.bus.ports import Ports
from sisas.bus.runtime import Bus
from sisas.errors import AppendConflict, BusError, UsageError
from sisas.handlers.backfills import (
    BackfillBody,
    BackfillState,
    Partition,
    backfill_id,
    decide_next,
    every_cron,
    evolve_backfill,
    listed_partitions,
    partition_document,
    partition_input,
    partition_key_of,
    partition_seed,
    partition_statuses,
    time_windows,
)
from sisas.handlers.schedules import Schedule, check_zone, tick_seed
from sisas.pipeline import Pipeline
from sisas.signals import (
    BackfillFinished,
    BackfillRequested,
    ChainHead,
    Draft,
    PartitionLaunched,
    PartitionSkipped,
    Scalar,
    StoredSignal,
)
from sisas.signals.kinds import ENDING_KINDS
from sisas.signals.names import (
    BACKFILLS_PIPELINE,
    LOG_PREFIX,
    LOG_STREAM,
    check_name,
    check_tags,
)

if TYPE_CHECKING:
    from sisas.client.client import Client

__all__ = [
    "BackfillPlan",
    "plan_backfill",
    "BackfillProgress",
    "BackfillReport",
    "backfill_ids",
    "drive_backfill",
    "read_backfill",
    "run_status",
]


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill runs: one run of ``pipeline`` per partition, its input made of
    ``input`` (a template with ``$`` paths) and the partition's document."""

    backfill_id: str
    pipeline: str
    partitions: list[Partition]
    input: Any = "$"
    config: Mapping[str, Scalar] = field(default_factory=dict)
    seed: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    max_concurrent: int = 0
    rerun_all: bool = False
    every: str = ""
    timezone: str = ""
    schedule: Schedule | None = None
    priority: int = 0
    code: Pipeline | None = None

    def document(self, partition: Partition) -> dict[str, Any]:
        return partition_document(
            self.backfill_id,
            self.pipeline,
            partition,
            timezone=self.timezone,
            schedule=self.schedule,
        )

    def check(self) -> None:
        """Raise :class:`UsageError` when the input template cannot be filled."""
        partition_input(self.input, self.document(self.partitions[0]))

    def seed_of(self, partition: Partition) -> int:
        if self.seed is not None:
            return self.seed
        if self.schedule is not None and partition.end:
            return tick_seed(self.schedule, datetime.fromisoformat(partition.end))
        return partition_seed(self.pipeline, partition.key)


@dataclass
class BackfillProgress:
    """Where a round stands (what a progress display shows)."""

    backfill_id: str
    round: int
    total: int
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    skipped: int = 0
    running: int = 0
    """Runs launched or followed that have not ended."""
    waiting: int = 0
    """Partitions not yet decided."""


@dataclass(frozen=True)
class BackfillReport:
    """A finished round: its record and each partition's run and status."""

    backfill_id: str
    pipeline: str
    finished: BackfillFinished
    partitions: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.finished.failed == 0 and self.finished.cancelled == 0


def plan_backfill(
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
) -> BackfillPlan:
    """The plan of a backfill over listed ``partitions``, or over the time windows of
    ``every`` (or ``schedule``'s cron) from ``start`` to ``end`` in ``timezone`` (the
    schedule's zone when given). With a schedule, its input template, config, seed and
    tags apply unless given. Raises :class:`UsageError` naming what is wrong."""
    check_name(pipeline, "pipeline name")
    if max_concurrent < 0:
        raise UsageError(
            f"--max-concurrent (max_concurrent=) {max_concurrent}: give 1 or more (0: no limit)"
        )
    if schedule is not None:
        if schedule.pipeline != pipeline:
            raise UsageError(
                f"schedule {schedule.name} runs {schedule.pipeline}, not {pipeline}: "
                "backfill its own pipeline"
            )
        timezone = schedule.timezone
        every = every or schedule.cron
        input = schedule.input if input == "$" else input
        config = config if config else schedule.config
        seed = seed if seed is not None else schedule.seed
        tags = {**schedule.tags, "schedule": schedule.name, **(tags or {})}
    zone = check_zone(timezone, "--timezone: ")
    if partitions is not None:
        if start is not None or end is not None or every:
            raise UsageError(
                "give listed partitions (--partitions; from Python partitions=) or time "
                "windows (--from, --to, --every or --schedule; start=, end=, every= or "
                "schedule=), not both"
            )
        parts = listed_partitions(partitions)
        every = ""
    else:
        if start is None or end is None or not every:
            raise UsageError(
                "a backfill over time needs --from, --to and --every (or --schedule NAME); "
                "or list the partitions with --partitions k1,k2 (from Python: start=, end= "
                "and every= or schedule=; or partitions=[...])"
            )
        cron = every_cron(every, zone)
        parts = time_windows(cron, zone, _aware(start, zone), _aware(end, zone))
        every = cron
    plan = BackfillPlan(
        backfill_id=backfill_id(pipeline, parts, name),
        pipeline=pipeline,
        partitions=parts,
        input=input,
        config=dict(config or {}),
        seed=seed,
        tags=check_tags(tags or {}),
        max_concurrent=max_concurrent,
        rerun_all=rerun_all,
        every=every,
        timezone=timezone if every else "",
        schedule=schedule,
        priority=priority,
        code=code,
    )
    plan.check()
    return plan


def _aware(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def run_status(last: StoredSignal | Any) -> str:
    """A run's status from its last signal: ``queued`` (not in the log, or requested and
    not started), ``running``, or how it ended (``completed``, ``failed``, ``cancelled``)."""
    if not isinstance(last, StoredSignal) or last.signal.kind == "run_requested":
        return "queued"
    if last.signal.kind in ENDING_KINDS:
        return last.signal.kind.removeprefix("run_")
    return "running"


class _Chain:
    """A backfill's chain as this driver last read it."""

    def __init__(self, ports: Ports, backfill_id: str) -> None:
        self.ports = ports
        self.id = backfill_id
        self.state = BackfillState()
        self.last: StoredSignal | None = None

    async def refresh(self) -> None:
        """Read the chain again when its last message is not the one last read."""
        now = await self.ports.log.last_of_run(self.id)
        if now is None and self.last is None:
            return
        if (
            isinstance(now, StoredSignal)
            and self.last is not None
            and now.stream_seq == self.last.stream_seq
        ):
            return
        state, last = BackfillState(), None
        for record in await self.ports.log.read_run(self.id):
            if not isinstance(record, StoredSignal):
                raise BusError(
                    f"the chain {self.id} holds a message that is not a signal: "
                    f"`sisas replay verify {self.id}` says what it is"
                )
            body = record.signal.body
            if not isinstance(
                body, BackfillRequested | PartitionLaunched | PartitionSkipped | BackfillFinished
            ):
                raise BusError(f"the chain {self.id} holds a {record.signal.kind}")
            state, last = evolve_backfill(state, body), record
        self.state, self.last = state, last

    async def append(self, body: BackfillBody, signer: Any = None) -> bool:
        """Append ``body`` after the chain's last signal; False when another driver
        appended first (the chain is then read again)."""
        if self.last is not None:
            head, expected = ChainHead.after(self.last.signal), self.last.stream_seq
        else:
            head, expected = ChainHead(pipeline=BACKFILLS_PIPELINE, run_id=self.id), 0
        sigs, _ = head.extend([Draft(body=body, at=datetime.now(UTC))])
        if signer is not None:
            sigs = [signer.sign(s) for s in sigs]
        try:
            landed = await self.ports.log.append(sigs, expected_last_seq=expected)
        except AppendConflict:
            await self.refresh()
            return False
        self.state = evolve_backfill(self.state, body)
        self.last = StoredSignal(stream_seq=landed.last_seq, signal=sigs[-1])
        return True


async def drive_backfill(
    client: Client,
    plan: BackfillPlan,
    *,
    on_progress: Callable[[BackfillProgress], None] | None = None,
    interval: float = 0.1,
    requested_by: str = "",
    signer: Any = None,
) -> BackfillReport:
    """Run ``plan``'s round to its end and return its report.

    Joins the backfill's round when one is unfinished (a restart, or another driver),
    else begins the next: a partition whose last run completed is skipped (all are run
    again with ``plan.rerun_all``), a failed or cancelled one gets a new attempt.
    Raises :class:`UsageError` when an unfinished round of the same id holds other
    partitions, or the input template cannot be filled.
    """
    plan.check()
    ports = client.bus
    chain = _Chain(ports, plan.backfill_id)
    await chain.refresh()
    by_key = {p.key: p for p in plan.partitions}
    req = chain.state.request
    if (
        req is not None
        and chain.state.finished is None
        and (req.partitions != [p.key for p in plan.partitions] or req.pipeline != plan.pipeline)
    ):
        raise UsageError(
            f"backfill {plan.backfill_id} has an unfinished round {req.round} over "
            f"{len(req.partitions)} other partitions of {req.pipeline}: name this one "
            "apart (--id NAME), or finish that one first (run it again as it was given)"
        )
    while chain.state.request is None or chain.state.finished is not None:
        nxt = chain.state.round + 1
        ask = BackfillRequested(
            backfill_id=plan.backfill_id,
            pipeline=plan.pipeline,
            round=nxt,
            partitions=[p.key for p in plan.partitions],
            reason=(
                "first round"
                if nxt == 1
                else "again: every partition runs again (--all)"
                if plan.rerun_all
                else "again: partitions with no completed run run again"
            ),
            max_concurrent=plan.max_concurrent,
            rerun_all=plan.rerun_all,
            every=plan.every,
            timezone=plan.timezone,
            schedule=plan.schedule.name if plan.schedule else "",
            tags=dict(plan.tags),
            requested_by=requested_by or client.requested_by,
        )
        await chain.append(ask, signer)
    ended: dict[str, str] = {}
    requested: set[str] = set()
    while True:
        await chain.refresh()
        state = chain.state
        for run_id in state.live(ended):
            last = await ports.log.last_of_run(run_id)
            status = run_status(last)
            if status in ("completed", "failed", "cancelled"):
                ended[run_id] = status
            elif last is not None:
                requested.add(run_id)
        await _request_launched(client, plan, chain, requested, by_key)
        if on_progress is not None:
            on_progress(_progress(state, ended))
        if state.finished is not None:
            return _report(plan, state, ended)
        decision = decide_next(state, ended, by_key)
        if decision is None:
            await asyncio.sleep(interval)
            continue
        if await chain.append(decision, signer) and isinstance(decision, PartitionLaunched):
            await _request_launched(client, plan, chain, requested, by_key)


async def _request_launched(
    client: Client,
    plan: BackfillPlan,
    chain: _Chain,
    requested: set[str],
    by_key: Mapping[str, Partition],
) -> None:
    """Request each run the round launched that this process has not seen requested
    (asking again for a run already asked for sends nothing: its idempotency key)."""
    state = chain.state
    for key, run_id in state.followed.items():
        if not run_id or run_id in requested or state.runs.get(key, ())[-1:] != (run_id,):
            continue
        attempt = len(state.runs[key])
        partition = by_key[key]
        await client.start(
            plan.pipeline,
            partition_input(plan.input, plan.document(partition)),
            seed=plan.seed_of(partition),
            config=plan.config,
            idempotency_key=partition_key_of(plan.backfill_id, key, attempt),
            run_id=run_id,
            code=plan.code,
            requested_by=f"backfill {plan.backfill_id} (partition {key}, attempt {attempt})",
            trace={"sisas.backfill": plan.backfill_id, "sisas.partition": key},
            check_plan=False,
            tags={**plan.tags, "backfill": plan.backfill_id, "partition": key},
            priority=plan.priority,
        )
        requested.add(run_id)


def _progress(state: BackfillState, ended: Mapping[str, str]) -> BackfillProgress:
    req = state.request
    assert req is not None
    p = BackfillProgress(backfill_id=req.backfill_id, round=req.round, total=len(req.partitions))
    for run_id in state.followed.values():
        if not run_id:
            p.skipped += 1
            continue
        status = ended.get(run_id, "")
        if status == "completed":
            p.completed += 1
        elif status == "failed":
            p.failed += 1
        elif status == "cancelled":
            p.cancelled += 1
        else:
            p.running += 1
    p.waiting = len(req.partitions) - len(state.followed)
    return p


def _report(plan: BackfillPlan, state: BackfillState, ended: Mapping[str, str]) -> BackfillReport:
    assert state.finished is not None
    assert state.request is not None
    rows = []
    for key in state.request.partitions:
        run = state.followed.get(key, "")
        last = state.runs.get(key, ())
        rows.append(
            {
                "partition": key,
                "run_id": run or (last[-1] if last else ""),
                "status": ended.get(run, "") if run else "skipped",
                "attempts": len(last),
            }
        )
    return BackfillReport(plan.backfill_id, plan.pipeline, state.finished, rows)


# -- reading backfills ------------------------------------------------------------------


async def backfill_ids(ports: Ports) -> list[str]:
    """The id of every backfill in the log, sorted (needs a server: the log's subjects)."""
    if not isinstance(ports, Bus):
        raise UsageError("listing backfills reads the server's log: connect to a server")
    try:
        info = await ports.js.stream_info(
            LOG_STREAM, subjects_filter=f"{LOG_PREFIX}.{BACKFILLS_PIPELINE}.>"
        )
    except NatsError as exc:
        raise BusError(
            f"cannot list the backfills: {exc}; check the server (`sisas status`)"
        ) from None
    return sorted({s.split(".")[3] for s in (info.state.subjects or {})})


async def read_backfill(ports: Ports, backfill_id: str) -> dict[str, Any]:
    """A backfill as its chain and its runs' logs tell it: its last round, each
    partition's status (``completed``, ``failed``, ``cancelled``, ``running``,
    ``queued``, ``missing``), run and attempts. Raises :class:`UsageError` when the log
    has no such backfill."""
    chain = _Chain(ports, backfill_id)
    await chain.refresh()
    state, req = chain.state, chain.state.request
    if req is None:
        raise UsageError(f"no backfill {backfill_id!r} in this log: `sisas backfills list`")
    last_runs = {runs[-1] for runs in state.runs.values() if runs}
    status_of = {r: run_status(await ports.log.last_of_run(r)) for r in sorted(last_runs)}
    statuses = partition_statuses(req.partitions, state, status_of)
    fin = state.finished
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    started = chain.last.signal.at if chain.last is not None else None
    return {
        "backfill_id": backfill_id,
        "pipeline": req.pipeline,
        "round": req.round,
        "state": "finished" if fin is not None else "running",
        "max_concurrent": req.max_concurrent,
        "every": req.every,
        "timezone": req.timezone,
        "schedule": req.schedule,
        "tags": dict(req.tags),
        "requested_by": req.requested_by,
        "last_decision_at": started.isoformat() if started else None,
        "counts": counts,
        "finished": (
            {
                "completed": fin.completed,
                "failed": fin.failed,
                "cancelled": fin.cancelled,
                "skipped": fin.skipped,
                "failed_partitions": list(fin.failed_partitions),
            }
            if fin is not None
            else None
        ),
        "partitions": [
            {
                "partition": key,
                "status": statuses[key],
                "run_id": (state.runs.get(key) or ("",))[-1],
                "attempts": len(state.runs.get(key, ())),
            }
            for key in req.partitions
        ],
    }
