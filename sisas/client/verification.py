"""Reading what replay needs from the bus: a run's (or the whole log's) records, and the
projection's state of each run to compare with the refold."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from sisas.bus.jetstream_log import JetStreamLog, decoded_logged
from sisas.bus.ports import Ports
from sisas.bus.runtime import Bus
from sisas.client.queries import ask
from sisas.environment import capture_environment
from sisas.errors import ArtifactNotFound, BusError, BusUnavailable, UnknownRun, UsageError
from sisas.handlers.state import RunState, state_digest
from sisas.handlers.tables import dec_hook
from sisas.pipeline import Pipeline
from sisas.projections.digests import (
    BY_NAME,
    ExpectedProjection,
    RunDigests,
    row_key,
    run_of_row,
    shown,
)
from sisas.projections.schema import Table
from sisas.replay.evidence import artifact_uses, located
from sisas.replay.executor import execute_tasks
from sisas.replay.rerun import RerunPlan, hold_side_effects, judge, plan_rerun, verdict
from sisas.replay.verdicts import (
    ArtifactProblem,
    FieldDiff,
    Finding,
    RerunVerdict,
    RowDiff,
    RunVerdict,
    VerifyReport,
)
from sisas.replay.verify import LogVerifier, Projected, RunVerifier, assemble, report
from sisas.services.secrets import MissingSecret, resolve_secrets
from sisas.signals.envelope import Signal
from sisas.signals.names import parse_run_subject, partition_of, run_partition
from sisas.signals.plan import Environment
from sisas.signals.records import LogGap, LogRecord, StoredSignal

__all__ = ["Fetch", "bus_fetch", "read_signals", "rerun_signals", "verify_log"]

Fetch = Callable[[str], Awaitable[bytes | ArtifactProblem | None]]
"""Bytes of an artifact by digest, or what is wrong with it (None: it is not there)."""

Progress = Callable[[str, int, int], None]

log = logging.getLogger(__name__)


async def verify_log(
    bus: Ports,
    run_id: str | None,
    *,
    trusted: frozenset[str] = frozenset(),
    projection: bool = True,
    on_progress: Progress | None = None,
    jobs: int = 1,
) -> VerifyReport:
    """Verify one run (or every run, ``run_id=None``) and compare with the projection:
    the stored state of each run and its rows in every table, against what its signals
    produce (a run the projection has not caught up with is not compared).

    ``jobs`` > 1 (every run only, on a server): that many processes verify the runs whose
    id hashes to their share, this one reading the log and handing the others their
    messages (:func:`_in_processes`); the report is the same."""
    compare = projection and isinstance(bus, Bus)  # in-memory ports have no projection
    if run_id is not None:
        records = await bus.log.read_run(run_id)
        if not records:
            raise UnknownRun(f"no run {run_id!r} in the log; `sisas runs` lists them")
        target = records[-1].stream_seq
    else:
        target = await bus.log.last_seq()
    live = await _live(bus, run_id) if compare and isinstance(bus, Bus) else None
    if run_id is not None:
        part = _verify_records(records, trusted, live, target, only=run_id)
        parts = [part]
    elif jobs > 1 and isinstance(bus, Bus):
        parts = await _in_processes(bus, jobs, trusted, live, target)
    else:
        parts = [await _verify_share(bus, trusted, live, target, 0, 1, on_progress)]
    verdicts = [v for p in parts for v in p.verdicts]
    for p in parts:
        for rid, v in p.detail.items():
            assert isinstance(bus, Bus)
            assert live is not None
            verdicts.append(v.verdict(await _detail(bus, rid, v, live, p.expected[rid])))
    return assemble(
        verdicts,
        [f for p in parts for f in p.log_findings],
        max(p.stream_seq for p in parts),
        trusted,
    )


class _Live(msgspec.Struct, frozen=True, kw_only=True):
    """What the projection holds, asked once: where it is, each run's state digest, and
    each run's table digests with the stream sequence of its last signal."""

    as_of: int
    states: dict[str, str]
    tables: dict[str, tuple[int, dict[str, str]]]


@dataclass
class _Part:
    """One reader's share of the verdicts: final ones, and the runs whose projection
    differs (compared again with the details asked of the projection)."""

    verdicts: list[RunVerdict]
    detail: dict[str, RunVerifier]
    expected: RunDigests
    log_findings: list[Finding]
    stream_seq: int


async def _live(bus: Bus, run_id: str | None) -> _Live:
    states: dict[str, str] = {}
    tables: dict[str, tuple[int, dict[str, str]]] = {}
    as_of = -1
    for verb, key, limit in (("states", "states", 5000), ("tables", "runs", 500)):
        after = ""
        while True:
            ask_for = {"run_ids": [run_id]} if run_id is not None else {}
            answer = await ask(bus, verb, {**ask_for, "after": after, "limit": limit})
            as_of = answer.as_of if as_of < 0 else min(as_of, answer.as_of)
            for e in answer.result[key]:
                if verb == "states":
                    states[e["run_id"]] = e["digest"]
                else:
                    tables[e["run_id"]] = (e["last_stream_seq"], e["tables"])
            after = answer.result["next"]
            if not after:
                break
    return _Live(as_of=max(as_of, 0), states=states, tables=tables)


async def _verify_share(
    bus: Ports,
    trusted: frozenset[str],
    live: _Live | None,
    target: int,
    share: int,
    shares: int,
    on_progress: Progress | None = None,
) -> _Part:
    """Verify the runs of the log (up to ``target``) in share ``share`` of ``shares``."""
    verifier = LogVerifier(trusted=trusted)
    expected = ExpectedProjection() if live is not None else None
    keep = None if shares == 1 else lambda subject: partition_of(subject, shares) == share
    try:
        n = 0
        async for record in bus.log.follow(live=False, to_seq=target, keep=keep):
            verifier.add(record)
            if expected is not None:
                expected.add(record)
            n += 1
            if on_progress is not None and n % 5000 == 0:
                on_progress("verifying", verifier.stream_seq, target)
        return _compare(verifier, live, expected.digests() if expected else {}, target)
    finally:
        if expected is not None:
            expected.close()


def _verify_records(
    records: Sequence[LogRecord],
    trusted: frozenset[str],
    live: _Live | None,
    target: int,
    *,
    only: str,
) -> _Part:
    verifier = LogVerifier(trusted=trusted, only=only).extend(records)
    if live is None:
        return _compare(verifier, None, {}, target)
    expected = ExpectedProjection()
    try:
        return _compare(verifier, live, expected.extend(records).digests(), target)
    finally:
        expected.close()


def _compare(verifier: LogVerifier, live: _Live | None, expected: RunDigests, target: int) -> _Part:
    """Each run's verdict where the projection agrees (or is not compared); the runs it
    differs on are left for :func:`_detail`."""
    verdicts: list[RunVerdict] = []
    detail: dict[str, RunVerifier] = {}
    for rid, v in verifier.runs.items():
        if live is None:
            verdicts.append(v.verdict())
            continue
        stored = live.tables.get(rid)
        behind = v.last_stream_seq > live.as_of
        moved = stored is not None and stored[0] > v.last_stream_seq and live.as_of > target
        if behind or moved:  # not caught up with the run yet, or past what was read
            verdicts.append(v.verdict())
            continue
        digest = live.states.get(rid)
        if digest is None:
            verdicts.append(v.verdict(Projected(digest=None)))
            continue
        want, have = expected.get(rid, {}), stored[1] if stored else {}
        if digest == state_digest(v.state) and want == have:
            verdicts.append(v.verdict(Projected(digest=digest)))
        else:
            detail[rid] = v
    wanted = {rid: expected.get(rid, {}) for rid in detail}
    return _Part(verdicts, detail, wanted, verifier.findings, verifier.stream_seq)


async def _detail(
    bus: Bus, rid: str, v: RunVerifier, live: _Live, want: dict[str, str]
) -> Projected:
    """The projection's view of a run it differs on: its state, for a field diff, and
    the rows of each table that differs."""
    digest = live.states.get(rid)
    state = None
    if digest is not None and digest != state_digest(v.state):
        full = await ask(bus, "states", {"run_ids": [rid], "full": True})
        raw = full.result["states"][0]["state"] if full.result["states"] else None
        if raw is not None:
            wire = msgspec.json.encode(raw)
            state = msgspec.json.decode(wire, type=RunState, dec_hook=dec_hook)
    stored = live.tables.get(rid)
    have = stored[1] if stored else {}
    differ = sorted(
        (t for t in {*want, *have} if want.get(t) != have.get(t)), key=_TABLE_ORDER.__getitem__
    )
    rows: list[RowDiff] = []
    for table in differ:
        rows += await _row_diffs(bus, rid, table)
    return Projected(digest=digest, state=state, tables=differ, rows=rows)


async def _in_processes(
    bus: Bus, jobs: int, trusted: frozenset[str], live: _Live | None, target: int
) -> list[_Part]:
    """The log verified by this process and ``jobs - 1`` others, each verifying a share
    of the runs (by a hash of the run id: runs are independent chains). This one reads
    the log, verifies its share (one run in ``2 * jobs - 1``: it also reads every
    message) and hands each other share its messages, undecoded, through a pipe: the
    log is read once, and each message decoded once."""
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")  # no copy of this loop's threads
    pipes = [spawn.Pipe(duplex=False) for _ in range(1, jobs)]  # (share's end, reader's)
    try:
        with concurrent.futures.ProcessPoolExecutor(jobs - 1, mp_context=spawn) as pool:
            others = [
                loop.run_in_executor(
                    pool,
                    _share_in_process,
                    trusted,
                    _slice(live, share, jobs),
                    target,
                    pipes[share - 1][0],
                )
                for share in range(1, jobs)
            ]
            try:
                mine = await _read_and_verify(
                    bus, trusted, _slice(live, 0, jobs), target, jobs, pipes
                )
            except BrokenPipeError:  # a share stopped reading: its error, not the pipe's
                await asyncio.gather(*others)
                raise
            finally:
                for _, sender in pipes:  # the others end, whatever happened here
                    sender.close()
            return [mine, *await asyncio.gather(*others)]
    finally:
        for receiver, _ in pipes:
            receiver.close()


_HANDED = 1_024
"""Messages the reader gathers for a share before it sends them on."""


def _share_of(run_id: str, shares: int) -> int:
    """The share verifying ``run_id``: the reader's (0) holds one run in ``2 * shares - 1``,
    each other two."""
    return (run_partition(run_id, 2 * shares - 1) + 1) // 2


async def _read_and_verify(
    bus: Bus,
    trusted: frozenset[str],
    live: _Live | None,
    target: int,
    shares: int,
    pipes: list[tuple[Connection, Connection]],
) -> _Part:
    """Share 0: read the log, verify share 0's runs (and what belongs to no run: the
    holes, messages on no run's subject), hand the others their messages."""
    verifier = LogVerifier(trusted=trusted)
    expected = ExpectedProjection() if live is not None else None
    handed: list[list[tuple[int, str, bytes]]] = [[] for _ in range(shares)]

    async def hand(share: int) -> None:
        batch, handed[share] = handed[share], []
        await asyncio.to_thread(pipes[share - 1][1].send, batch)

    reader = bus.log
    assert isinstance(reader, JetStreamLog)  # what a Bus holds
    try:
        async for item in reader.read_messages(to_seq=target):
            if isinstance(item, LogGap):
                records: Sequence[LogRecord] = [item]
            else:
                seq, subject, data = item
                parsed = parse_run_subject(subject)
                share = 0 if parsed is None else _share_of(parsed[1], shares)
                if share:
                    handed[share].append(item)
                    if len(handed[share]) >= _HANDED:
                        await hand(share)
                    continue
                records = decoded_logged(seq, subject, data)
            for record in records:
                verifier.add(record)
                if expected is not None:
                    expected.add(record)
        for share in range(1, shares):
            await hand(share)
            await asyncio.to_thread(pipes[share - 1][1].send, None)
        return _compare(verifier, live, expected.digests() if expected else {}, target)
    finally:
        if expected is not None:
            expected.close()


def _slice(live: _Live | None, share: int, shares: int) -> _Live | None:
    """What a share needs of the projection: its runs."""
    if live is None:
        return None

    def mine(run_id: str) -> bool:
        return _share_of(run_id, shares) == share

    return _Live(
        as_of=live.as_of,
        states={k: v for k, v in live.states.items() if mine(k)},
        tables={k: v for k, v in live.tables.items() if mine(k)},
    )


def _share_in_process(
    trusted: frozenset[str], live: _Live | None, target: int, pipe: Connection
) -> _Part:
    """Verify the messages the reader hands on through ``pipe``, until it says the end."""
    verifier = LogVerifier(trusted=trusted)
    expected = ExpectedProjection() if live is not None else None
    try:
        while (messages := pipe.recv()) is not None:
            for seq, subject, data in messages:
                for record in decoded_logged(seq, subject, data):
                    verifier.add(record)
                    if expected is not None:
                        expected.add(record)
        return _compare(verifier, live, expected.digests() if expected else {}, target)
    finally:
        pipe.close()
        if expected is not None:
            expected.close()


_TABLE_ORDER = {name: i for i, name in enumerate(BY_NAME)}

MAX_ROW_DIFFS = 20
"""Differing rows named per run and table."""


async def _row_diffs(bus: Bus, run_id: str, table: str) -> list[RowDiff]:
    """The rows of ``run_id`` in ``table`` that differ between the projection and the
    fold of the run's records (read again: a run's rows depend on its records alone)."""
    t = BY_NAME[table]
    fold = ExpectedProjection(keep_rows=True)
    try:
        fold.extend(await bus.log.read_run(run_id)).digests()
        want = {_key(t, r): shown(t, r) for r in fold.rows(table) if run_of_row(t, r) == run_id}
    finally:
        fold.close()
    have: dict[str, list[Any]] = {}
    offset = 0
    while True:
        page = await ask(bus, "tables", {"rows_of": run_id, "table": table, "offset": offset})
        for r in page.result["rows"]:
            have[_key(t, r)] = r
        offset = page.result["next"]
        if not offset:
            break
    out: list[RowDiff] = []
    for k in sorted({*want, *have}):
        w, h = want.get(k), have.get(k)
        if w == h:
            continue
        key = msgspec.json.decode(k)
        if w is None:
            out.append(RowDiff(table=table, key=key, change="extra"))
        elif h is None:
            out.append(RowDiff(table=table, key=key, change="missing"))
        else:
            cols = [
                FieldDiff(path=name, recorded=hv, new=wv)
                for name, hv, wv in zip(t.names, h, w, strict=True)
                if hv != wv
            ]
            out.append(RowDiff(table=table, key=key, change="differs", columns=cols))
        if len(out) >= MAX_ROW_DIFFS:
            break
    return out


def _key(t: Table, row: Sequence[Any]) -> str:
    """A row's key, as JSON: equal for the projection's row and the log's."""
    return msgspec.json.encode(msgspec.to_builtins(row_key(t, row))).decode()


async def read_signals(bus: Ports, run_id: str) -> list[Signal]:
    """A run's signals, refusing a run whose stored log is not intact."""
    records = await bus.log.read_run(run_id)
    if not records:
        raise UnknownRun(f"no run {run_id!r} in the log; `sisas runs` lists them")
    verifier = LogVerifier(only=run_id).extend(records)
    broken = report(verifier)
    if not broken.intact and broken.first is not None:
        raise UsageError(
            f"run {run_id}'s log is not intact ({broken.first.problem}: "
            f"{broken.first.message}); `sisas replay verify {run_id}` shows why"
        )
    return [r.signal for r in records if isinstance(r, StoredSignal)]


def bus_fetch(bus: Ports) -> Fetch:
    """An artifact fetcher reading the server's artifact store: the bytes, or what is
    wrong with them (missing, or damaged: bytes that do not hash to their digest)."""

    async def fetch(digest: str) -> bytes | ArtifactProblem:
        try:
            return await bus.artifacts.get(digest)
        except ArtifactNotFound as exc:
            return ArtifactProblem(digest=digest, problem="missing", detail=str(exc))
        except BusUnavailable:
            raise  # the server went away: no verdict on the evidence either way
        except BusError as exc:  # the store refuses bytes that differ from their digest
            return ArtifactProblem(digest=digest, problem="damaged", detail=str(exc))

    return fetch


async def rerun_signals(
    signals: Sequence[Signal],
    pipelines: dict[str, Pipeline],
    fetch: Fetch,
    *,
    workers: int = 1,
    on_progress: Progress | None = None,
    nats_server: str = "",
    include_side_effects: bool = False,
) -> RerunVerdict:
    """Execute the run's deciding attempts again with the code in ``pipelines``, in this
    interpreter's environment (compared with the recorded one in the verdict;
    ``nats_server``: the version of the server read from, "" when offline).

    Phases with side effects (in the recorded plan or in the code loaded now) are not
    executed again unless ``include_side_effects``: their recorded results are reused.
    Every artifact the rerun reads (each attempt's inputs and recorded output) is fetched
    and checked first; one that is missing or damaged is named in the verdict
    (``artifact_problems``, evidence incomplete) and an attempt that needs it as an input
    is not executed (it cannot be compared, so the run is not shown deterministic)."""
    plan = plan_rerun(signals, include_side_effects=include_side_effects)
    pipe = pipelines.get(plan.pipeline)
    if pipe is None:
        raise UsageError(
            f"run {plan.run_id} is of pipeline {plan.pipeline!r}, whose code is not loaded: "
            "pass --pipelines MODULE_OR_FILE (the code to rerun it with)"
        )
    declared = [name for name, spec in pipe.phases.items() if spec.side_effects]
    if include_side_effects:
        plan = msgspec.structs.replace(plan, side_effects=sorted({*plan.side_effects, *declared}))
    else:
        plan = hold_side_effects(plan, declared)
    uses = artifact_uses(signals)
    artifacts: dict[str, bytes] = {}
    problems: dict[str, ArtifactProblem] = {}
    for task in [*plan.tasks, *plan.reused]:
        for digest in task.artifacts:
            if digest in artifacts or digest in problems:
                continue
            got = await fetch(digest)
            if isinstance(got, bytes):
                artifacts[digest] = got
            else:
                problem = got or ArtifactProblem(digest=digest, problem="missing")
                problems[digest] = located(digest, problem.problem, problem.detail, uses)
    runnable, blocked = [], []
    not_rerun = dict(plan.not_rerun)
    for task in plan.tasks:
        needed = [problems[d] for d in task.artifacts if d in problems and d != task.artifact]
        if needed:
            where = "" if task.item is None else f"[{task.item}]"
            not_rerun[task.phase + where] = f"its input {needed[0].digest} is {needed[0].problem}"
            blocked.append(task)
        else:
            runnable.append(task)
    plan = msgspec.structs.replace(plan, tasks=runnable, blocked=blocked, not_rerun=not_rerun)

    def done(n: int, total: int) -> None:
        if on_progress is not None:
            loop.call_soon_threadsafe(on_progress, "rerunning", n, total)

    loop = asyncio.get_running_loop()
    declared = sorted({s for t in plan.tasks for s in _declared(pipe, t.phase)})
    try:  # resolved here, as the worker that ran them did: never from the log
        secrets = resolve_secrets(declared, worker="this rerun")
    except MissingSecret as exc:
        raise UsageError(f"{exc}; the rerun executes phases that read it") from None
    outcomes = await asyncio.to_thread(
        execute_tasks, pipe, plan, artifacts, workers=workers, on_done=done, secrets=secrets
    )
    results = [
        judge(task, outcome, artifacts.get(task.artifact), seconds=seconds)
        for task, (outcome, seconds) in zip(plan.tasks, outcomes, strict=True)
    ]
    return verdict(
        plan,
        results,
        workers=workers,
        artifact_problems=list(problems.values()),
        artifacts_read=len(artifacts),
        current_code=pipe.plan().fingerprint,
        current_environment=capture_environment(pipe, nats_server=nats_server),
        attempt_environments=await _environments(plan, fetch),
        compute_seconds=sum(seconds for _, seconds in outcomes),
    )


async def _environments(plan: RerunPlan, fetch: Fetch) -> dict[str, Environment]:
    """The environment records the run's attempts name, by digest; one that cannot be
    read (a bundle exported without it, a record from before) is left out, and the
    comparison falls back on the environment registered with the plan."""
    found: dict[str, Environment] = {}
    for digest in sorted({t.environment for t in plan.tasks if t.environment}):
        data = await fetch(digest)
        if not isinstance(data, bytes):
            continue
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            found[digest] = msgspec.json.decode(data, type=Environment)
    return found


def _declared(pipe: Pipeline, phase: str) -> list[str]:
    spec = pipe.phases.get(phase)
    return spec.secrets if spec is not None else []
