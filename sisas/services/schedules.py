"""The schedule service: the clock in, one run per schedule tick out.

Each pass, for each schedule, the service:

1. reads the last signal of the schedule's chain (``sch-NAME``, pipeline ``schedules``):
   the schedule's state after its last decision (:func:`sisas.handlers.schedules.state_after`);
2. makes sure the run that decision started was requested (a scheduler that crashed
   between recording and requesting leaves it to the next one: the run id derives from
   the schedule and the tick, so asking again starts nothing new);
3. releases a queued tick when the running run has ended, else decides the next due
   tick (:func:`sisas.handlers.schedules.decide_tick`, pure, ``now`` passed in): on
   time, missed while no scheduler ran (catch-up policy), paused, or overlapping;
4. appends the decision as a ``schedule_ticked`` signal with the expected last
   sequence of the chain: of several schedulers deciding one tick, the first append
   wins, the others reload and act on the recorded decision;
5. requests the run the decision starts, through the client.

Pauses live in the KV bucket ``sisas-schedules`` (``pause.NAME``), written by
``sisas schedules pause|resume``; a paused schedule's ticks are recorded as skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from sisas.bus.runtime import Bus
from sisas.client.client import Client
from sisas.errors import AppendConflict, BusError, SisasError
from sisas.handlers.schedules import (
    Schedule,
    decide_tick,
    due_ticks,
    release_queued,
    schedule_chain,
    state_after,
    tick_document,
    tick_input,
    tick_key,
    tick_seed,
)
from sisas.security.keys import signer_from_file
from sisas.signals import ChainHead, Draft, ScheduleTicked, StoredSignal
from sisas.signals.kinds import ENDING_KINDS
from sisas.signals.names import (
    LOG_PREFIX,
    LOG_STREAM,
    SCHEDULE_BUCKET,
    SCHEDULES_PIPELINE,
    check_name,
)

__all__ = [
    "Pause",
    "ScheduleService",
    "last_decision",
    "logged_schedules",
    "pause_schedule",
    "paused_schedules",
    "resume_schedule",
]

log = logging.getLogger(__name__)


class Pause(msgspec.Struct, frozen=True, kw_only=True):
    """Who paused a schedule, when, and why."""

    by: str
    at: str
    note: str = ""

    def text(self) -> str:
        return f"by {self.by} at {self.at}" + (f": {self.note}" if self.note else "")


async def _bucket(bus: Bus) -> KeyValue:
    try:
        try:
            return await bus.js.key_value(SCHEDULE_BUCKET)
        except (NotFoundError, BucketNotFoundError):
            return await bus.js.create_key_value(
                bucket=SCHEDULE_BUCKET, history=1, replicas=bus.settings.replicas
            )
    except NatsError as exc:
        raise BusError(
            f"cannot open the bucket {SCHEDULE_BUCKET}: {exc}; check the server "
            "(`sisas status`) and this user's permissions"
        ) from None


async def pause_schedule(bus: Bus, name: str, *, by: str, note: str = "") -> Pause | None:
    """Pause ``name``; return the pause already in force (None when it was running)."""
    kv = await _bucket(bus)
    key = f"pause.{check_name(name, 'schedule name')}"
    before = await _get_pause(kv, name)
    if before is None:
        pause = Pause(by=by, at=datetime.now(UTC).isoformat(timespec="seconds"), note=note)
        await kv.put(key, msgspec.json.encode(pause))
    return before


async def resume_schedule(bus: Bus, name: str) -> Pause | None:
    """Resume ``name``; return the pause it lifted (None: it was not paused)."""
    kv = await _bucket(bus)
    before = await _get_pause(kv, check_name(name, "schedule name"))
    if before is not None:
        await kv.delete(f"pause.{name}")
    return before


async def paused_schedules(bus: Bus) -> dict[str, Pause]:
    """Every paused schedule and its pause."""
    kv = await _bucket(bus)
    try:
        keys = await kv.keys()
    except (NoKeysError, NotFoundError):  # nats-py: an empty bucket has no keys to list
        return {}
    out = {}
    for key in keys:
        if key.startswith("pause."):
            pause = await _get_pause(kv, key.removeprefix("pause."))
            if pause is not None:
                out[key.removeprefix("pause.")] = pause
    return out


async def _get_pause(kv: KeyValue, name: str) -> Pause | None:
    try:
        entry = await kv.get(f"pause.{name}")
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        return msgspec.json.decode(entry.value, type=Pause)
    except msgspec.DecodeError:
        return Pause(by="?", at="?", note="unreadable pause entry")


async def last_decision(bus: Bus, name: str) -> ScheduleTicked | None:
    """The last recorded decision of schedule ``name`` (None: it never ticked)."""
    last = await bus.log.last_of_run(schedule_chain(name))
    if isinstance(last, StoredSignal) and isinstance(last.signal.body, ScheduleTicked):
        return last.signal.body
    return None


async def logged_schedules(bus: Bus) -> dict[str, ScheduleTicked]:
    """Every schedule with decisions in the log, by name: its last decision (whoever
    declared it: a schedules file, a pipeline's code)."""
    try:
        info = await bus.js.stream_info(
            LOG_STREAM, subjects_filter=f"{LOG_PREFIX}.{SCHEDULES_PIPELINE}.>"
        )
    except NatsError as exc:
        raise BusError(
            f"cannot list the schedules in the log: {exc}; check the server (`sisas status`)"
        ) from None
    found: dict[str, ScheduleTicked] = {}
    for chain in sorted({s.split(".")[3] for s in (info.state.subjects or {})}):
        last = await bus.log.last_of_run(chain)
        if isinstance(last, StoredSignal) and isinstance(last.signal.body, ScheduleTicked):
            found[last.signal.body.schedule] = last.signal.body
    return found


class ScheduleService:
    """Decides the ticks of ``schedules`` until stopped; any number may run at once."""

    def __init__(
        self,
        bus: Bus,
        schedules: list[Schedule],
        *,
        clock: Callable[[], datetime] | None = None,
        interval: float = 0.2,
    ) -> None:
        self.bus = bus
        self.schedules = schedules
        self.clock = clock or (lambda: datetime.now(UTC))
        self.interval = interval
        self.decided = 0
        """Decisions this service recorded (not those it found recorded)."""
        self.started = 0
        self._kv: KeyValue | None = None
        self._since: dict[str, datetime] = {}
        self._ensured: set[str] = set()
        self._client = Client(bus)
        key = bus.settings.signing_key
        self.signer = signer_from_file(key) if key is not None else None

    async def start(self) -> None:
        """Open the pause bucket. A schedule that never ticked begins after this moment.
        Raises :class:`BusError` naming what the server refused."""
        self._kv = await _bucket(self.bus)
        now = self.clock()
        for s in self.schedules:
            self._since.setdefault(s.name, now)

    async def run(self, stop: asyncio.Event) -> None:
        """Decide ticks until ``stop`` is set."""
        assert self._kv is not None, "start() first"
        while not stop.is_set():
            try:
                busy = await self.step_all()
            except SisasError:
                log.exception("a schedule pass failed; trying again")
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    async def step_all(self, now: datetime | None = None) -> bool:
        """One decision, at most, per schedule, at ``now`` (default: the clock's time);
        whether any was made."""
        moved = False
        for s in self.schedules:
            try:
                moved |= await self.step(s, now or self.clock())
            except (SisasError, NatsError) as exc:
                log.warning("schedule %s: %s; trying again next pass", s.name, exc)
        return moved

    async def step(self, s: Schedule, now: datetime) -> bool:
        """Decide the next thing ``s`` has to do at ``now``; whether anything was."""
        chain = schedule_chain(s.name)
        last = await self.bus.log.last_of_run(chain)
        if last is not None and not isinstance(last, StoredSignal):
            raise BusError(
                f"the chain {chain} ends in a message that is not a signal: "
                "`sisas replay verify` says what it is"
            )
        body = last.signal.body if last is not None else None
        if body is not None and not isinstance(body, ScheduleTicked):
            raise BusError(f"the chain {chain} holds a {last.signal.kind if last else ''}")
        state = state_after(body)
        if body is not None and body.action in ("started", "released"):
            await self._ensure(s, body)
        ticks, dropped = due_ticks(s, state.last_tick or self._since[s.name], now)
        if not ticks and not state.queued:
            return False
        paused = await self._paused(s.name)
        if state.queued and not paused and not await self._live(state.running):
            return await self._append(chain, last, release_queued(s, state), s)
        if not ticks:
            return False
        tick = ticks[0]
        late = sum(1 for t in ticks if (now - t).total_seconds() > s.grace)
        decision = decide_tick(
            s,
            tick,
            state,
            now=now,
            missed_rank=late - 1 if late else None,
            running_live=bool(state.running) and await self._live(state.running),
            paused=paused,
            also_missed=dropped,
        )
        return await self._append(chain, last, decision, s)

    async def _append(
        self, chain: str, last: StoredSignal | None, body: ScheduleTicked, s: Schedule
    ) -> bool:
        if last is not None:
            head, expected = ChainHead.after(last.signal), last.stream_seq
        else:
            head, expected = ChainHead(pipeline=SCHEDULES_PIPELINE, run_id=chain), 0
        sigs, _ = head.extend([Draft(body=body, at=datetime.now(UTC))])
        if self.signer is not None:
            sigs = [self.signer.sign(sig) for sig in sigs]
        try:
            await self.bus.log.append(sigs, expected_last_seq=expected)
        except AppendConflict:
            return True  # another scheduler decided first: act on its record next pass
        self.decided += 1
        if body.action in ("started", "released"):
            await self._ensure(s, body)
        return True

    async def _ensure(self, s: Schedule, body: ScheduleTicked) -> None:
        """Request the run ``body`` started (once per process; asking again is harmless)."""
        if body.run_id in self._ensured:
            return
        tick = datetime.fromisoformat(body.tick)
        start = datetime.fromisoformat(body.window_start) if body.window_start else tick
        data: Any = tick_input(s, tick_document(s, tick, start))
        try:
            await self._client.start(
                s.pipeline,
                data,
                seed=tick_seed(s, tick),
                config=s.config,
                run_id=body.run_id,
                requested_by=f"schedule {s.name} (tick {body.tick})",
                idempotency_key=f"schedule:{s.name}:{tick_key(tick)}",
                trace={"sisas.schedule": s.name, "sisas.tick": body.tick},
                check_plan=False,
                tags={**s.tags, "schedule": s.name},
            )
        except SisasError as exc:  # e.g. the file changed the input since the tick
            log.error(
                "schedule %s: the run of tick %s was not requested: %s", s.name, body.tick, exc
            )
        else:
            self.started += 1
        self._ensured.add(body.run_id)

    async def _live(self, run_id: str) -> bool:
        if not run_id:
            return False
        last = await self.bus.log.last_of_run(run_id)
        return not (isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS)

    async def _paused(self, name: str) -> str:
        assert self._kv is not None
        pause = await _get_pause(self._kv, name)
        return pause.text() if pause is not None else ""
