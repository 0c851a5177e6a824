"""Backfills: one run per partition (a time window or a listed key), at most N at once.

A backfill has an id (``bf-…``, derived from the pipeline and its partition keys unless
named) and a chain of that id (pipeline ``backfills``) holding every decision:

- ``backfill_requested``: a round begins (its partitions, its limit of runs at once);
- ``partition_launched``: a partition's run, whose id derives from the backfill, the
  partition and the attempt (:func:`partition_run_id`);
- ``partition_skipped``: its run completed in an earlier round, or still runs;
- ``backfill_finished``: every partition decided and every run followed ended.

Folding the chain (:func:`evolve_backfill`) gives each partition's runs and the current
round's decisions; :func:`decide_next` is a pure function of that state and of which
runs the log says have ended, so any number of drivers (two commands racing, a
restarted one) append the same decisions, the first append winning.

Time windows are ``[start, end)`` between consecutive ticks of a cron expression in a
time zone (``--every 1h`` is ``0 * * * *``); a window's key is its start, ISO 8601 in
the zone. A run's input is built from the partition's document (:func:`partition_document`)
with the ``$`` paths triggers and schedules use.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec
from cronsim import CronSim

from sisas.errors import UsageError
from sisas.handlers.derive import keyed_run_id
from sisas.handlers.schedules import Schedule, check_cron, tick_document
from sisas.handlers.triggers import fill_template
from sisas.signals.kinds import (
    BackfillFinished,
    BackfillRequested,
    PartitionLaunched,
    PartitionSkipped,
)
from sisas.signals.names import check_name

__all__ = [
    "MAX_PARTITIONS",
    "BackfillBody",
    "BackfillState",
    "Partition",
    "backfill_id",
    "decide_next",
    "evolve_backfill",
    "every_cron",
    "fold_backfill",
    "listed_partitions",
    "partition_document",
    "partition_input",
    "partition_key_of",
    "partition_run_id",
    "partition_seed",
    "partition_statuses",
    "time_windows",
]

MAX_PARTITIONS: Final = 10_000
"""The most partitions one backfill holds (a typo in ``--from`` should not start a
million runs)."""

BackfillBody = BackfillRequested | PartitionLaunched | PartitionSkipped | BackfillFinished

_EVERY = re.compile(r"^(\d+)([smhdw])$")


class Partition(msgspec.Struct, frozen=True, kw_only=True):
    """One partition: its key, and for a time window its bounds (ISO 8601, in the zone)."""

    key: str
    start: str = ""
    end: str = ""


# -- partitions -------------------------------------------------------------------------


def every_cron(every: str, zone: ZoneInfo) -> str:
    """The cron expression ``--every`` means: ``Ns``, ``Nm``, ``Nh`` (N dividing 60 or
    24), ``1d``, ``1w`` (Mondays), or a cron expression as it is. Raises
    :class:`UsageError` naming the forms."""
    m = _EVERY.match(every.strip())
    if m is None:
        return check_cron(every, zone, "--every: ", "; or write 15m, 1h, 6h, 1d, 1w")
    n, unit = int(m.group(1)), m.group(2)
    forms = {
        "s": (60, "*/{n} * * * * *"),
        "m": (60, "*/{n} * * * *"),
        "h": (24, "0 */{n} * * *"),
    }
    if unit in forms and n >= 1 and forms[unit][0] % n == 0:
        cron = forms[unit][1].format(n=n)
        return cron.replace("*/1 ", "* ") if n == 1 else cron
    if unit == "d" and n == 1:
        return "0 0 * * *"
    if unit == "w" and n == 1:
        return "0 0 * * 1"
    raise UsageError(
        f"--every {every!r}: give seconds or minutes dividing 60 (15m), hours dividing 24 "
        "(6h), 1d, 1w, or a cron expression ('0 2 * * *')"
    )


def time_windows(cron: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[Partition]:
    """The windows ``[tick, next tick)`` of ``cron`` in ``zone`` that lie in
    ``[start, end]``, oldest first. Raises :class:`UsageError` when there are none or
    more than :data:`MAX_PARTITIONS`."""
    if end <= start:
        raise UsageError(f"--to {end.isoformat()} is not after --from {start.isoformat()}")
    ticks = CronSim(cron, (start - timedelta(seconds=1)).astimezone(zone).replace(microsecond=0))
    out: list[Partition] = []
    first = next(ticks)
    if first < start:  # cronsim begins at the whole second before a fractional start
        first = next(ticks)
    for nxt in ticks:
        if nxt > end:
            break
        out.append(Partition(key=first.isoformat(), start=first.isoformat(), end=nxt.isoformat()))
        if len(out) > MAX_PARTITIONS:
            raise UsageError(
                f"more than {MAX_PARTITIONS} windows from {start.isoformat()} to "
                f"{end.isoformat()}: narrow --from/--to or widen --every"
            )
        first = nxt
    if not out:
        raise UsageError(
            f"no whole window of {cron!r} lies from {start.isoformat()} to {end.isoformat()}: "
            "widen --from/--to (a window ends at the next tick)"
        )
    return out


def listed_partitions(keys: Sequence[str]) -> list[Partition]:
    """Partitions of listed keys, in order. Raises :class:`UsageError` for an empty
    list, an empty, long or repeated key."""
    cleaned = [k.strip() for k in keys]
    if not cleaned or cleaned == [""]:
        raise UsageError("no partitions: give --partitions k1,k2 or a --partitions-file")
    seen: set[str] = set()
    for key in cleaned:
        if not key or len(key) > 200 or any(ord(c) < 32 for c in key):
            raise UsageError(
                f"partition key {key!r}: use 1 to 200 printable characters (no empty keys)"
            )
        if key in seen:
            raise UsageError(f"partition key {key!r} is listed twice: list each once")
        seen.add(key)
    if len(cleaned) > MAX_PARTITIONS:
        raise UsageError(f"{len(cleaned)} partitions: at most {MAX_PARTITIONS} in one backfill")
    return [Partition(key=k) for k in cleaned]


def backfill_id(pipeline: str, partitions: Sequence[Partition], name: str = "") -> str:
    """The backfill's id: ``bf-NAME`` when named, else derived from the pipeline and the
    partition keys (the same command names the same backfill)."""
    if name:
        check_name(name, "backfill name")
        bid = name if name.startswith("bf-") else f"bf-{name}"
        return check_name(bid, "backfill id (bf-NAME)")
    digest = hashlib.sha256(
        "\n".join([pipeline, *(p.key for p in partitions)]).encode()
    ).hexdigest()
    return f"bf-{pipeline[:40]}-{digest[:12]}"


def partition_run_id(pipeline: str, bid: str, key: str, attempt: int) -> str:
    """The run of ``attempt`` (1-based) of partition ``key``: the same backfill,
    partition and attempt, the same run."""
    return keyed_run_id(pipeline, partition_key_of(bid, key, attempt))


def partition_key_of(bid: str, key: str, attempt: int) -> str:
    """The idempotency key a partition's run is requested with."""
    return f"backfill:{bid}:{key}:{attempt}"


def partition_seed(pipeline: str, key: str) -> int:
    """A partition's seed when none is given: the same pipeline and key, the same seed
    (whatever the backfill or attempt)."""
    digest = hashlib.sha256(f"{pipeline}\0partition\0{key}".encode()).hexdigest()
    return int(digest[:8], 16) >> 1


def partition_document(
    bid: str,
    pipeline: str,
    partition: Partition,
    *,
    timezone: str = "",
    schedule: Schedule | None = None,
) -> dict[str, Any]:
    """What a partition's input is built from: ``$.partition``, ``$.backfill``,
    ``$.pipeline`` and, for a time window, ``$.window.start``, ``$.window.end``,
    ``$.date`` (the start's), ``$.tick`` (the end: the schedule tick that closes the
    window) and ``$.timezone``; with a schedule, what its tick would have."""
    doc: dict[str, Any] = {"backfill": bid, "pipeline": pipeline, "partition": partition.key}
    if partition.start:
        start = datetime.fromisoformat(partition.start)
        end = datetime.fromisoformat(partition.end)
        if schedule is not None:
            doc.update(tick_document(schedule, end, start))
        else:
            doc.update(
                {
                    "tick": partition.end,
                    "date": start.date().isoformat(),
                    "timezone": timezone,
                    "window": {"start": partition.start, "end": partition.end},
                }
            )
        doc["date"] = start.date().isoformat()
    return doc


def partition_input(template: Any, document: dict[str, Any]) -> Any:
    """The run input ``template`` makes of a partition's document. Raises
    :class:`UsageError` naming the paths the document lacks."""
    value, missing = fill_template(template, document)
    if missing:
        have = ", ".join(f"$.{k}" for k in sorted(document))
        raise UsageError(
            f"the input template needs {', '.join(missing)}, which a partition lacks: "
            f"use $ or {have}"
        )
    return value


# -- the chain --------------------------------------------------------------------------


class BackfillState(msgspec.Struct, frozen=True, kw_only=True):
    """A backfill as its chain tells it."""

    request: BackfillRequested | None = None
    """The current (last) round's request."""
    runs: dict[str, tuple[str, ...]] = {}
    """Each partition's runs launched by the backfill, in any round, oldest first."""
    followed: dict[str, str] = {}
    """This round: each decided partition and the run it follows ("" when skipped as
    completed)."""
    finished: BackfillFinished | None = None
    """The current round's end, once recorded."""
    rounds: int = 0

    @property
    def round(self) -> int:
        return self.request.round if self.request is not None else 0

    def live(self, ended: Mapping[str, str]) -> list[str]:
        """The backfill's runs (any round) the log has not seen end."""
        return [r for runs in self.runs.values() for r in runs if r not in ended]


def evolve_backfill(state: BackfillState, body: BackfillBody) -> BackfillState:
    """The state after one decision of the chain."""
    if isinstance(body, BackfillRequested):
        return BackfillState(request=body, runs=state.runs, rounds=state.rounds + 1)
    if isinstance(body, PartitionLaunched):
        runs = {**state.runs, body.partition: (*state.runs.get(body.partition, ()), body.run_id)}
        followed = {**state.followed, body.partition: body.run_id}
        return msgspec.structs.replace(state, runs=runs, followed=followed)
    if isinstance(body, PartitionSkipped):
        run = body.run_id if body.because == "running" else ""
        return msgspec.structs.replace(state, followed={**state.followed, body.partition: run})
    return msgspec.structs.replace(state, finished=body)


def fold_backfill(bodies: Sequence[BackfillBody]) -> BackfillState:
    """The state a chain's decisions leave."""
    state = BackfillState()
    for body in bodies:
        state = evolve_backfill(state, body)
    return state


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def decide_next(
    state: BackfillState, ended: Mapping[str, str], windows: Mapping[str, Partition] | None = None
) -> PartitionLaunched | PartitionSkipped | BackfillFinished | None:
    """The next decision of the current round, or None (a slot must free up, or runs
    must end first, or the round is over).

    ``ended``: each run of the backfill the log says has ended, and how (``completed``,
    ``failed``, ``cancelled``). A partition whose last run completed is skipped (unless
    the round reruns all); one whose last run has not ended is followed, never launched
    twice; the others are launched in order while fewer than ``max_concurrent`` of the
    backfill's runs have not ended. ``windows``: the partitions' bounds, recorded on
    each launch.
    """
    req = state.request
    if req is None or state.finished is not None:
        return None
    pending = [p for p in req.partitions if p not in state.followed]
    for key in pending:  # skips take no slot: decide them first
        last = state.runs.get(key, ())[-1:]
        if not last:
            continue
        run = last[0]
        if run not in ended:
            return PartitionSkipped(
                backfill_id=req.backfill_id,
                pipeline=req.pipeline,
                round=req.round,
                partition=key,
                because="running",
                run_id=run,
                reason=f"run {run} (an earlier round's) has not ended: followed, not run twice",
            )
        if ended[run] == "completed" and not req.rerun_all:
            return PartitionSkipped(
                backfill_id=req.backfill_id,
                pipeline=req.pipeline,
                round=req.round,
                partition=key,
                because="completed",
                run_id=run,
                reason=f"run {run} completed: nothing to do (--all reruns it)",
            )
    if pending:
        key = pending[0]
        live = state.live(ended)
        if req.max_concurrent and len(live) >= req.max_concurrent:
            return None
        before = state.runs.get(key, ())
        attempt = len(before) + 1
        slots = (
            f"{len(live)} of {req.max_concurrent} runs of the backfill not ended"
            if req.max_concurrent
            else f"{_plural(len(live), 'run')} of the backfill not ended (no limit)"
        )
        why = "first run of the partition"
        if before:
            how = ended.get(before[-1], "ended")
            why = f"run {before[-1]} {how}" + (" (--all)" if how == "completed" else "")
        window = (windows or {}).get(key)
        return PartitionLaunched(
            backfill_id=req.backfill_id,
            pipeline=req.pipeline,
            round=req.round,
            partition=key,
            run_id=partition_run_id(req.pipeline, req.backfill_id, key, attempt),
            attempt=attempt,
            reason=f"{why}: attempt {attempt}; {slots}",
            window_start=window.start if window else "",
            window_end=window.end if window else "",
        )
    followed = [r for r in state.followed.values() if r]
    if any(r not in ended for r in followed):
        return None
    outcome = {k: ended.get(r, "") for k, r in state.followed.items() if r}
    failed = sorted((k for k, s in outcome.items() if s == "failed"), key=req.partitions.index)
    completed = sum(1 for s in outcome.values() if s == "completed")
    cancelled = sum(1 for s in outcome.values() if s == "cancelled")
    skipped = sum(1 for r in state.followed.values() if not r)
    return BackfillFinished(
        backfill_id=req.backfill_id,
        pipeline=req.pipeline,
        round=req.round,
        completed=completed,
        failed=len(failed),
        cancelled=cancelled,
        skipped=skipped,
        failed_partitions=failed,
        reason=(
            f"{_plural(len(req.partitions), 'partition')}: {completed} completed, "
            f"{len(failed)} failed, {cancelled} cancelled, {skipped} skipped (completed before)"
        ),
    )


def partition_statuses(
    partitions: Sequence[str], state: BackfillState, status_of: Mapping[str, str]
) -> dict[str, str]:
    """Each partition's status for a grid: its last run's (``status_of``: a run's status
    as the log tells it, e.g. ``completed``, ``failed``, ``running``, ``queued``), or
    ``missing`` when the backfill never launched one."""
    out = {}
    for key in partitions:
        runs = state.runs.get(key, ())
        out[key] = status_of.get(runs[-1], "queued") if runs else "missing"
    return out
