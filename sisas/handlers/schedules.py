"""Schedules: a cron expression in a time zone becomes one run per tick.

A schedules file (TOML, ``--schedules FILE``)::

    [[schedule]]
    name = "nightly"
    cron = "0 2 * * *"            # 5 fields, or 6 with seconds first ("*/10 * * * * *")
    timezone = "Europe/Paris"     # an IANA name (default UTC); DST as Debian cron does
    pipeline = "taxonomy"
    input = { day = "$.date", since = "$.window.start", until = "$.window.end" }
    config = { "filter.min_support" = 2 }
    overlap = "skip"              # the last run has not ended: skip | queue | allow
    catch_up = 3                  # after downtime: run the last 3 missed ticks (0: none)
    grace = 5.0                   # seconds a tick may be late and still be on time
    tags = { team = "data" }

The input is built from the tick's document (:func:`tick_document`): ``$`` is all of it,
``$.tick``, ``$.date``, ``$.window.start``, ``$.window.end`` its parts. A tick closes
the window that began at the previous tick.

Pure: the ticks, a tick's input and the decision on a tick read only their arguments;
the scheduler (a shell) reads the clock and passes ``now`` in. A tick's run id derives
from the schedule and the tick's instant, so however many schedulers decide a tick, and
however often, it names one run.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from sisas.errors import UsageError
from sisas.handlers.derive import keyed_run_id
from sisas.handlers.triggers import explain_invalid, fill_template, toml_tables
from sisas.pipeline import Pipeline
from sisas.signals.kinds import Scalar, ScheduleTicked
from sisas.signals.names import check_name, check_tags

__all__ = [
    "MAX_CATCH_UP",
    "Overlap",
    "Schedule",
    "ScheduleState",
    "check_cron",
    "check_schedule",
    "check_zone",
    "decide_tick",
    "due_ticks",
    "next_ticks",
    "parse_schedules",
    "release_queued",
    "schedule_chain",
    "schedules_of",
    "state_after",
    "tick_document",
    "tick_input",
    "tick_key",
    "tick_run_id",
    "tick_seed",
    "window_start",
]

Overlap = Literal["skip", "queue", "allow"]
MAX_CATCH_UP: Final = 100
"""The most missed ticks a scheduler records one by one after downtime (and so the
largest ``catch_up``); earlier ones are counted in ``also_missed``."""

_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
"""Where a cron expression is tried when checked (not the clock: this module is pure)."""


class Schedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One schedule: when (``cron`` in ``timezone``), what (``pipeline``, ``input``
    built from the tick, ``config``, ``seed``, ``tags``) and the policies for an overlap
    and for ticks missed while no scheduler ran."""

    name: str
    cron: str
    pipeline: str
    timezone: str = "UTC"
    input: Any = "$"
    config: dict[str, Scalar] = {}
    seed: int | None = None
    overlap: Overlap = "skip"
    catch_up: int | Literal["skip"] = 0
    grace: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    tags: dict[str, str] = {}

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def catch_up_limit(self) -> int:
        """How many of the most recent missed ticks run (0: none)."""
        return 0 if self.catch_up == "skip" else self.catch_up


def check_zone(timezone: str, what: str = "") -> ZoneInfo:
    """The zone named ``timezone``; raise :class:`UsageError` (``what`` first) if none is."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"{what}unknown time zone {timezone!r}: use an IANA name such as "
            "'UTC' or 'Europe/Paris'"
        ) from None


def check_cron(cron: str, zone: ZoneInfo, what: str = "", hint: str = "") -> str:
    """``cron`` if it is a cron expression; raise :class:`UsageError` (``what`` first,
    ``hint`` last) saying the forms."""
    try:
        next(CronSim(cron, _EPOCH.astimezone(zone)))
    except (CronSimError, StopIteration, ValueError) as exc:
        raise UsageError(
            f"{what}{cron!r} is not a cron expression ({exc}): write 5 fields "
            "(minute hour day month weekday, e.g. '0 2 * * *') or 6 with seconds first "
            f"('*/10 * * * * *'){hint}"
        ) from None
    return cron


def check_schedule(s: Schedule, where: str = "the schedules file") -> Schedule:
    """``s`` if it can run; raise :class:`UsageError` naming what is wrong and the fix."""
    what = f"{where}: schedule {s.name!r}"
    check_name(s.name, f"{where}: schedule name")
    check_name(s.pipeline, f"{what} pipeline")
    zone = check_zone(s.timezone, f"{what}: ")
    check_cron(s.cron, zone, f"{what}: cron ", "; `sisas schedules test EXPR` shows its next ticks")
    if s.catch_up_limit < 0 or s.catch_up_limit > MAX_CATCH_UP:
        raise UsageError(
            f'{what}: catch_up = {s.catch_up} is out of range: 0 to {MAX_CATCH_UP}, or "skip"'
        )
    check_tags(s.tags, f"{what} tag")
    tick_input(s, tick_document(s, _EPOCH, _EPOCH))  # a path a tick lacks: refused now
    return s


def parse_schedules(text: str, where: str = "the schedules file") -> list[Schedule]:
    """The schedules in ``text`` (TOML). Raises :class:`UsageError` naming what is wrong."""
    return toml_tables(text, "schedule", Schedule, lambda s, _: check_schedule(s, where), where)


def schedules_of(pipelines: Iterable[Pipeline]) -> list[Schedule]:
    """The schedules ``pipelines`` declare (:meth:`Pipeline.schedule`), checked."""
    found = []
    for pipe in pipelines:
        where = f"pipeline {pipe.name}"
        for i, entry in enumerate(pipe.schedules):
            try:
                schedule = msgspec.convert(entry, Schedule)
            except msgspec.ValidationError as exc:
                raise UsageError(
                    f"{where}: schedule #{i + 1}: {explain_invalid(exc, Schedule)}"
                ) from None
            found.append(check_schedule(schedule, where))
    return found


# -- ticks ------------------------------------------------------------------------------


def _after(cron: str, zone: ZoneInfo, moment: datetime) -> Iterator[datetime]:
    """The ticks of ``cron`` in ``zone`` strictly after ``moment``, in order."""
    return CronSim(cron, moment.astimezone(zone).replace(microsecond=0))


def next_ticks(cron: str, timezone: str, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` ticks strictly after ``after``, in ``timezone``."""
    ticks = _after(cron, ZoneInfo(timezone), after)
    return [next(ticks) for _ in range(count)]


def window_start(s: Schedule, tick: datetime) -> datetime:
    """The tick before ``tick``: where the window ``tick`` closes began."""
    return next(CronSim(s.cron, tick.astimezone(s.zone), reverse=True))


def due_ticks(s: Schedule, after: datetime, until: datetime) -> tuple[list[datetime], int]:
    """The ticks in ``(after, until]``: the last :data:`MAX_CATCH_UP` + 1 of them, and how
    many earlier ones there were besides."""
    kept: deque[datetime] = deque(maxlen=MAX_CATCH_UP + 1)
    total = 0
    for tick in _after(s.cron, s.zone, after):
        if tick > until:
            break
        kept.append(tick)
        total += 1
    return list(kept), total - len(kept)


def tick_key(tick: datetime) -> str:
    """A tick's instant in UTC, ISO 8601: what its run id and seed derive from."""
    return tick.astimezone(UTC).isoformat()


def tick_run_id(s: Schedule, tick: datetime) -> str:
    """The run a tick names: the same schedule and instant, the same run."""
    return keyed_run_id(s.pipeline, f"schedule:{s.name}:{tick_key(tick)}")


def tick_seed(s: Schedule, tick: datetime) -> int:
    if s.seed is not None:
        return s.seed
    digest = hashlib.sha256(f"{s.name}\0{tick_key(tick)}".encode()).hexdigest()
    return int(digest[:8], 16) >> 1


def schedule_chain(name: str) -> str:
    """The run id of the chain holding a schedule's ticks (``sch-NAME``)."""
    if len(name) <= 60:
        return f"sch-{name}"
    return f"sch-{name[:47]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def tick_document(s: Schedule, tick: datetime, start: datetime) -> dict[str, Any]:
    """What a tick's input is built from: its time and window, in the schedule's zone."""
    local = tick.astimezone(s.zone)
    return {
        "schedule": s.name,
        "tick": local.isoformat(),
        "date": local.date().isoformat(),
        "timezone": s.timezone,
        "window": {"start": start.astimezone(s.zone).isoformat(), "end": local.isoformat()},
    }


def tick_input(s: Schedule, document: dict[str, Any]) -> Any:
    """The run input ``s.input`` makes of a tick's document. Raises
    :class:`UsageError` naming the paths the document lacks."""
    value, missing = fill_template(s.input, document)
    if missing:
        raise UsageError(
            f"schedule {s.name}: the input needs {', '.join(missing)}, which a tick lacks: "
            "use $, $.tick, $.date, $.timezone, $.window.start or $.window.end"
        )
    return value


# -- decisions --------------------------------------------------------------------------


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule's state, as its chain's last signal left it."""

    last_tick: datetime | None = None
    running: str = ""
    """The run the schedule started last (whether it has ended is the log's to say)."""
    queued: tuple[str, ...] = ()
    """Ticks waiting for the running run to end (overlap ``queue``), oldest first."""


def state_after(body: ScheduleTicked | None) -> ScheduleState:
    """The state a schedule's last recorded decision left (a fresh one for None)."""
    if body is None:
        return ScheduleState()
    return ScheduleState(
        last_tick=datetime.fromisoformat(body.last_tick) if body.last_tick else None,
        running=body.running,
        queued=tuple(body.queued),
    )


def _catch_up_text(s: Schedule) -> str:
    n = s.catch_up_limit
    if n == 0:
        return "the catch-up policy skips missed ticks (catch_up = 0)"
    return f"the catch-up policy runs only the last {n} missed tick{'s' if n > 1 else ''}"


def decide_tick(
    s: Schedule,
    tick: datetime,
    state: ScheduleState,
    *,
    now: datetime,
    missed_rank: int | None = None,
    running_live: bool = False,
    paused: str = "",
    also_missed: int = 0,
) -> ScheduleTicked:
    """The decision on ``tick`` (the next one after ``state.last_tick``).

    ``missed_rank``: None when the tick is on time (``now`` at most ``grace`` seconds
    after it); else its place among the ticks missed while no scheduler ran, 0 for the
    most recent. ``running_live``: ``state.running`` has not ended. ``paused``: why the
    schedule is paused ("" when it is not). Returns the signal body recording it, with
    the state after it.
    """
    key = tick.astimezone(s.zone).isoformat()
    run_id = tick_run_id(s, tick)
    fields: dict[str, Any] = {
        "schedule": s.name,
        "pipeline": s.pipeline,
        "tick": key,
        "window_start": window_start(s, tick).isoformat(),
        "window_end": key,
        "also_missed": also_missed,
        "last_tick": key,
        "running": state.running,
        "queued": list(state.queued),
    }

    def skip(reason: str) -> ScheduleTicked:
        return ScheduleTicked(action="skipped", reason=reason, **fields)

    if paused:
        return skip(f"the schedule is paused ({paused}); `sisas schedules resume {s.name}`")
    late = (now - tick).total_seconds()
    catch_up = missed_rank is not None
    if missed_rank is not None and missed_rank >= s.catch_up_limit:
        return skip(f"missed: no scheduler ran at the tick ({late:.0f} s ago); {_catch_up_text(s)}")
    when = (
        f"missed while no scheduler ran ({late:.0f} s ago), run by catch-up"
        if catch_up
        else "on time"
    )
    fields["catch_up"] = catch_up
    busy = running_live and state.running
    if busy and s.overlap == "skip":
        return skip(f"overlap: run {state.running} has not ended (overlap = skip)")
    if (busy or state.queued) and s.overlap == "queue":
        behind = f"run {state.running} has not ended" if busy else "earlier ticks wait"
        fields["queued"] = [*state.queued, key]
        return ScheduleTicked(
            action="queued",
            reason=f"overlap: {behind}; queued behind it (overlap = queue), {when}",
            run_id=run_id,
            **fields,
        )
    fields["running"] = run_id
    reason = when
    if busy:
        reason = f"{when}; run {state.running} has not ended, started beside it (overlap = allow)"
    return ScheduleTicked(action="started", reason=reason, run_id=run_id, **fields)


def release_queued(s: Schedule, state: ScheduleState) -> ScheduleTicked:
    """The decision to start the oldest queued tick's run, ``state.running`` having
    ended. ``state.queued`` must not be empty."""
    key = state.queued[0]
    tick = datetime.fromisoformat(key)
    run_id = tick_run_id(s, tick)
    return ScheduleTicked(
        schedule=s.name,
        pipeline=s.pipeline,
        tick=key,
        action="released",
        reason=f"run {state.running} ended: the queued tick starts (overlap = queue)",
        run_id=run_id,
        window_start=window_start(s, tick).isoformat(),
        window_end=key,
        last_tick=state.last_tick.isoformat() if state.last_tick else key,
        running=run_id,
        queued=list(state.queued[1:]),
    )
