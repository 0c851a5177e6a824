"""Pipeline plans published in the ``sisas-pipelines`` KV bucket for orchestrators to read
(the code itself is loaded by :mod:`sisas.loader`)."""

from __future__ import annotations

import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from sisas.bus.translate import nats_errors
from sisas.signals.names import PIPELINE_BUCKET
from sisas.signals.plan import PipelinePlan

__all__ = ["PlanRegistry"]


class PlanRegistry:
    """Plans by pipeline name, in a JetStream KV bucket.

    Once :meth:`listen` is called (the orchestrator does: it reads a plan for every run
    it starts), plans read are kept while they stay current, at most ``keep`` seconds:
    the registry listens to the bucket's subjects, and a put of a plan (or a
    reconnection, during which one may have been missed) drops what it kept as soon as
    its notice arrives (the notice of a put by another connection may come a moment
    after that put's answer). Where the server does not let this user
    listen there (an orchestrator user made before the grant), a plan kept is at most
    ``keep`` seconds old. Other readers read the bucket every time.
    """

    def __init__(self, js: JetStreamContext, nc: NATS | None = None, *, keep: float = 1.0) -> None:
        self._js = js
        self._nc = nc
        self._keep = keep
        self._bucket: KeyValue | None = None
        self._kept: dict[str, tuple[float, PipelinePlan]] = {}
        self._changes = 0
        """Puts seen (and reconnections): a read that saw one begin is not kept."""
        self._listen = False
        self._listening: Subscription | None = None
        self._reconnects = 0

    def listen(self) -> None:
        """Keep the plans read while they stay current (see the class)."""
        self._listen = self._nc is not None

    async def _kv(self) -> KeyValue:
        # The handle is kept: looking the bucket up is a request of its own.
        if self._bucket is None:
            try:
                self._bucket = await self._js.key_value(PIPELINE_BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._bucket = await self._js.create_key_value(bucket=PIPELINE_BUCKET, history=5)
        return self._bucket

    async def publish(self, plan: PipelinePlan) -> None:
        fix = f"is JetStream reachable and the {PIPELINE_BUCKET} bucket writable?"
        with nats_errors(f"register pipeline {plan.name}", fix):
            kv = await self._kv()
            await kv.put(plan.name, msgspec.json.encode(plan))
        self._changed()  # its notice may come after the put's answer

    async def get(self, name: str) -> PipelinePlan | None:
        if not self._listen or self._nc is None:
            return await self._read(name)
        if self._nc.stats["reconnects"] != self._reconnects:  # puts may have been missed
            self._reconnects = self._nc.stats["reconnects"]
            self._changed()
        kept = self._kept.get(name)
        if kept is not None and time.monotonic() - kept[0] < self._keep:
            return kept[1]
        if self._listening is None:
            with nats_errors("listen for pipeline plans"):
                self._listening = await self._nc.subscribe(
                    f"$KV.{PIPELINE_BUCKET}.>", cb=self._on_put
                )
                await self._nc.flush()  # the server listens for us from here on
        changes, read_at = self._changes, time.monotonic()
        plan = await self._read(name)
        # An absent plan is never kept: a worker registering it now must not find runs
        # of it refused while its notice is on the way.
        if plan is not None and changes == self._changes:
            self._kept[name] = (read_at, plan)
        return plan

    async def _on_put(self, msg: Msg) -> None:
        self._changed()

    def _changed(self) -> None:
        self._changes += 1
        self._kept.clear()

    async def _read(self, name: str) -> PipelinePlan | None:
        with nats_errors(f"read the plan of pipeline {name}"):
            try:
                kv = await self._kv()
                entry = await kv.get(name)
            except (KeyNotFoundError, NotFoundError):
                return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=PipelinePlan)

    async def names(self) -> list[str]:
        with nats_errors("list the registered pipelines"):
            try:
                kv = await self._kv()
                return sorted(await kv.keys())
            except (NoKeysError, NotFoundError):  # an empty bucket
                return []
