"""The admission service: runs of a pipeline with a concurrency limit wait for a slot.

A client that starts a run of a limited pipeline (``sisas limits set PIPELINE N``) sends
its ``start_run`` to ``SISAS_ADMIT`` instead of ``SISAS_IN``. This service reads it with
the durable consumer ``sisas-admission`` and, per request:

1. folds the pipeline's admission chain (``adm-PIPELINE``) and asks the log which slot
   holders have ended;
2. decides (:mod:`sisas.handlers.admission`, pure): released at once when a slot is
   free and nobody waits, else queued by priority;
3. appends the decision (``run_released`` / ``run_queued``, with its reason) with the
   chain's expected last sequence, so several services decide each request once;
4. sends a released request on to the orchestrator (``SISAS_IN``, deduplicated by its
   id), then acknowledges it.

A run carrying a tag with a limit (``sisas limits set --tag k=v N``) is decided in the
tags' chain (``adm--tags``) the same way, after its pipeline's chain when its pipeline is
limited too; a released run goes on to the orchestrator only once every chain it needs
released it.

Each pass, a slot freed by a run that ended goes to the next waiting run (highest
priority, then the first asked), recorded as ``run_released``. A slot holder whose run
is not in the log yet is sent on again (once per process: a service that died between
recording and sending leaves it to the next). The service idles until ``SISAS_ADMIT``
exists (``sisas limits set`` creates it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from sisas.bus.inputs import publish_input_acked
from sisas.bus.limits import limits, tag_limits
from sisas.bus.runtime import Bus
from sisas.errors import AppendConflict, SisasError
from sisas.handlers.admission import (
    TAGS_CHAIN,
    AdmissionState,
    admission_chain,
    decide_release,
    decide_request,
    decide_tag_release,
    decide_tag_request,
    decide_withdrawal,
    evolve_admission,
)
from sisas.security.keys import signer_from_file
from sisas.signals import ChainHead, Draft, RunQueued, RunReleased, RunWithdrawn, StoredSignal
from sisas.signals.inputs import CancelRun, StartRun, decode_input
from sisas.signals.kinds import ENDING_KINDS
from sisas.signals.names import ADMISSION_PIPELINE, ADMIT_STREAM, admit_subject

__all__ = ["AdmissionService", "admission_state", "chain_state", "waiting_note"]

log = logging.getLogger(__name__)

CONSUMER = "sisas-admission"
_UNLIMITED = 1 << 30
"""A lifted limit: every waiting run is released."""


async def admission_state(bus: Bus, pipeline: str) -> tuple[AdmissionState, StoredSignal | None]:
    """The fold of ``pipeline``'s admission chain and its last signal."""
    return await chain_state(bus, admission_chain(pipeline))


async def chain_state(bus: Bus, chain: str) -> tuple[AdmissionState, StoredSignal | None]:
    """The fold of the admission chain ``chain`` (``adm-P``, ``adm--tags``) and its last
    signal."""
    state, last = AdmissionState(), None
    for record in await bus.log.read_run(chain):
        if isinstance(record, StoredSignal) and isinstance(
            record.signal.body, RunQueued | RunReleased | RunWithdrawn
        ):
            state, last = evolve_admission(state, record.signal.body), record
    return state, last


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


async def waiting_note(bus: Bus, run_id: str, pipeline: str = "") -> str:
    """What keeps ``run_id`` from starting when it waits for a slot under a concurrency
    limit, as a sentence naming the limit, its place in the queue and the commands to
    see or leave it; "" when it waits in no queue (``pipeline``: look only there)."""
    for name in [pipeline] if pipeline else sorted(await limits(bus, cleared=True)):
        state, _ = await admission_state(bus, name)
        if state.waiting_of(run_id) is not None:
            return _place(state, run_id, f"{name} allows {await _limit_text(bus, name)}")
    state, _ = await chain_state(bus, TAGS_CHAIN)
    waiting = state.waiting_of(run_id)
    if waiting is None:
        return ""
    tags = ", ".join(waiting.tags) or "its tags"
    return _place(state, run_id, f"the limits on {tags} are reached")


async def _limit_text(bus: Bus, pipeline: str) -> str:
    n = (await limits(bus)).get(pipeline)
    return f"{n} run{'s' if n != 1 else ''} at once" if n else "more runs: its limit was lifted"


def _place(state: AdmissionState, run_id: str, why: str) -> str:
    waiting = state.waiting_of(run_id)
    if waiting is None:
        return ""
    queue = sorted(state.waiting, key=lambda w: (-w.priority, w.order))
    place = next(i for i, w in enumerate(queue) if w.run_id == run_id) + 1
    return (
        f"run {run_id} waits for a slot ({why}): {_ordinal(place)} of {len(queue)} waiting "
        f"(priority {waiting.priority}); `sisas limits list` shows the queue, "
        f"`sisas cancel {run_id}` takes it out"
    )


class AdmissionService:
    """Admits runs of limited pipelines until stopped; any number may run at once."""

    def __init__(self, bus: Bus, *, interval: float = 0.2, batch: int = 32) -> None:
        self.bus = bus
        self.interval = interval
        self.batch = batch
        self.queued = 0
        self.released = 0
        self._sub: Any = None
        self._sent: set[str] = set()
        self._next_bind = 0.0
        self._limits_cache: dict[str, int] = {}
        self._tags_cache: dict[str, int] = {}
        self._limits_until = 0.0
        self._folded: dict[str, tuple[AdmissionState, StoredSignal | None]] = {}
        key = bus.settings.signing_key
        self.signer = signer_from_file(key) if key is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        """Admit until ``stop`` is set."""
        try:
            while not stop.is_set():
                try:
                    busy = await self.step()
                except (SisasError, NatsError) as exc:
                    log.warning("admission pass failed: %s; trying again", exc)
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            sub, self._sub = self._sub, None
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def step(self) -> bool:
        """Handle the requests waiting in ``SISAS_ADMIT``, then free slots; whether
        anything was decided."""
        if self._sub is None and not await self._bind():
            return False
        moved = False
        try:
            msgs = await self._sub.fetch(self.batch, timeout=self.interval)
        except (TimeoutError, NatsTimeoutError):
            msgs = []
        for msg in msgs:
            try:
                moved |= await self._request(msg.data)
                await msg.ack()
            except Exception:  # a failure here must not stop the service
                log.exception("admission of %s failed; it will be redelivered", msg.subject)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
        for pipeline, limit in (await self._limits()).items():
            moved |= await self._free(pipeline, limit or _UNLIMITED)
        tags = await self._tag_limits()
        if tags:
            moved |= await self._free_tags(tags)
        return moved

    async def _limits(self) -> dict[str, int]:
        """Every limit, lifted ones as 0 (read at most once a second)."""
        now = asyncio.get_running_loop().time()
        if now >= self._limits_until:
            self._limits_cache = await limits(self.bus, cleared=True)
            self._tags_cache = await tag_limits(self.bus, cleared=True)
            self._limits_until = now + 1.0
        return self._limits_cache

    async def _tag_limits(self) -> dict[str, int]:
        """Every tag's limit, lifted ones as 0 (read with :meth:`_limits`)."""
        await self._limits()
        return self._tags_cache

    async def _bind(self) -> bool:
        now = asyncio.get_running_loop().time()
        if now < self._next_bind:
            return False
        self._next_bind = now + 2.0  # SISAS_ADMIT appears with the first limit
        try:
            await self.bus.js.stream_info(ADMIT_STREAM)
        except NotFoundError:
            return False
        await self.bus.js.add_consumer(
            ADMIT_STREAM,
            ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
        )
        self._sub = await self.bus.js.pull_subscribe_bind(CONSUMER, ADMIT_STREAM)
        return True

    async def _request(self, data: bytes) -> bool:
        inp = decode_input(data)
        if isinstance(inp, CancelRun):
            return await self._cancel(inp)
        if not isinstance(inp, StartRun):
            log.error("not a start_run in %s: %s; dropped", ADMIT_STREAM, type(inp).__name__)
            return False
        limit = (await limits(self.bus)).get(inp.pipeline)  # now, not as cached
        seq = await self._seq_of(inp)
        if limit is None:  # no pipeline limit (lifted, or only its tags have one)
            return await self._forward(inp, seq)
        chain = admission_chain(inp.pipeline)
        for _ in range(10):  # another admission service may decide on the same chain
            state, last = await self._state(chain)
            ended = await self._ended(state, chain)
            decision = decide_request(
                state,
                inp.pipeline,
                limit,
                inp.run_id,
                priority=inp.priority,
                request_seq=seq,
                ended=ended,
            )
            if decision is None:  # asked again: send it on if it holds a slot
                if inp.run_id in state.holders:
                    await self._forward(inp, seq)
                return False
            if not await self._append(chain, last, decision):
                continue
            if isinstance(decision, RunReleased):
                await self._forward(inp, seq)
            return True
        return False

    async def _forward(self, inp: StartRun, seq: int) -> bool:
        """Send a request its pipeline's limit let go on: to the tags' chain when it
        carries limited tags, else to the orchestrator."""
        tags = await tag_limits(self.bus)  # now, not as cached
        mine = tuple(t for t in (f"{k}={v}" for k, v in inp.tags.items()) if t in tags)
        if not mine:
            await self._send(inp)
            return True
        for _ in range(10):
            state, last = await self._state(TAGS_CHAIN)
            decision = decide_tag_request(
                state,
                inp.pipeline,
                inp.run_id,
                mine,
                tags,
                priority=inp.priority,
                request_seq=seq,
                ended=await self._ended(state, TAGS_CHAIN),
            )
            if decision is None:
                if inp.run_id in state.holders:
                    await self._send(inp)
                return False
            if not await self._append(TAGS_CHAIN, last, decision):
                continue
            if isinstance(decision, RunReleased):
                await self._send(inp)
            return True
        return False

    async def _cancel(self, inp: CancelRun) -> bool:
        """Withdraw a waiting run from the queue and send its request on marked cancelled
        (the orchestrator records it requested and cancelled, starting nothing); a run
        not waiting is cancelled by the orchestrator as any run."""
        for _ in range(10):  # another admission service may decide on the same chain
            chain, state, last = admission_chain(inp.pipeline), AdmissionState(), None
            for chain in (admission_chain(inp.pipeline), TAGS_CHAIN):
                state, last = await self._state(chain)
                if state.waiting_of(inp.run_id) is not None or inp.run_id in state.withdrawn:
                    break
            decision = decide_withdrawal(
                state, inp.pipeline, inp.run_id, inp.reason, inp.requested_by
            )
            if decision is None:
                if inp.run_id not in state.withdrawn:
                    await publish_input_acked(self.bus.js, inp)
                return False
            if not await self._append(chain, last, decision):
                continue
            msg = await self.bus.js.get_msg(ADMIT_STREAM, decision.request_seq)
            start = decode_input(msg.data or b"")
            if isinstance(start, StartRun):
                cancelled = msgspec.structs.replace(
                    start,
                    cancelled=inp.reason or "cancelled while it waited for a slot",
                    cancelled_by=inp.requested_by,
                )
                await publish_input_acked(self.bus.js, cancelled)
            return True
        return False

    async def _seq_of(self, inp: StartRun) -> int:
        """Where ``inp`` is stored in ``SISAS_ADMIT`` (its first copy: ids deduplicate)."""
        msg = await self.bus.js.get_last_msg(ADMIT_STREAM, admit_subject(inp.pipeline, inp.run_id))
        return int(msg.seq or 0)

    async def _free(self, pipeline: str, limit: int) -> bool:
        chain = admission_chain(pipeline)
        state, last = await self._state(chain)
        ended = await self._ended(state, chain)
        decision = decide_release(state, pipeline, limit, ended)
        if decision is None or not await self._append(chain, last, decision):
            return False
        msg = await self.bus.js.get_msg(ADMIT_STREAM, decision.request_seq)
        inp = decode_input(msg.data or b"")
        if isinstance(inp, StartRun):
            await self._forward(inp, decision.request_seq)
        return True

    async def _free_tags(self, limits: dict[str, int]) -> bool:
        state, last = await self._state(TAGS_CHAIN)
        ended = await self._ended(state, TAGS_CHAIN)
        decision = decide_tag_release(state, limits, ended)
        if decision is None or not await self._append(TAGS_CHAIN, last, decision):
            return False
        msg = await self.bus.js.get_msg(ADMIT_STREAM, decision.request_seq)
        inp = decode_input(msg.data or b"")
        if isinstance(inp, StartRun):
            await self._send(inp)
        return True

    async def _state(self, chain: str) -> tuple[AdmissionState, StoredSignal | None]:
        """:func:`chain_state`, refolded only when the chain moved."""
        now = await self.bus.log.last_of_run(chain)
        cached = self._folded.get(chain)
        if cached is not None and (
            (now is None and cached[1] is None)
            or (
                isinstance(now, StoredSignal)
                and cached[1] is not None
                and now.stream_seq == cached[1].stream_seq
            )
        ):
            return cached
        self._folded[chain] = await chain_state(self.bus, chain)
        return self._folded[chain]

    async def _ended(self, state: AdmissionState, chain: str) -> tuple[str, ...]:
        """The slot holders whose runs ended; a holder not yet in the log is sent on
        again (once per process; from a pipeline's chain, through the tags' chain)."""
        ended = []
        for run_id, seq in state.holding:
            last = await self.bus.log.last_of_run(run_id)
            if isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS:
                ended.append(run_id)
            elif last is None and run_id not in self._sent and seq:
                msg = await self.bus.js.get_msg(ADMIT_STREAM, seq)
                inp = decode_input(msg.data or b"")
                if isinstance(inp, StartRun):
                    self._sent.add(run_id)  # asked once per process, whatever comes of it
                    if chain == TAGS_CHAIN:
                        await self._send(inp)
                    else:
                        await self._forward(inp, seq)
        return tuple(ended)

    async def _send(self, inp: StartRun) -> None:
        await publish_input_acked(self.bus.js, inp)
        self._sent.add(inp.run_id)

    async def _append(
        self,
        chain: str,
        last: StoredSignal | None,
        body: RunQueued | RunReleased | RunWithdrawn,
    ) -> bool:
        if last is not None:
            head, expected = ChainHead.after(last.signal), last.stream_seq
        else:
            head, expected = ChainHead(pipeline=ADMISSION_PIPELINE, run_id=chain), 0
        sigs, _ = head.extend([Draft(body=body, at=datetime.now(UTC))])
        if self.signer is not None:
            sigs = [self.signer.sign(s) for s in sigs]
        try:
            landed = await self.bus.log.append(sigs, expected_last_seq=expected)
        except AppendConflict:
            return False
        cached = self._folded.get(chain)
        if cached is not None and cached[1] is last:  # the chain moved by this decision only
            stored = StoredSignal(stream_seq=landed.last_seq, signal=sigs[-1])
            self._folded[chain] = (evolve_admission(cached[0], body), stored)
        if isinstance(body, RunQueued):
            self.queued += 1
        elif isinstance(body, RunReleased):
            self.released += 1
        return True
