"""Pipeline plans published in the ``sisas-pipelines`` KV bucket for orchestrators to read
(the code itself is loaded by :mod:`sisas.loader`)."""

from __future__ import annotations

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

    Plans read are kept while they stay current: the registry listens to the bucket's
    subjects, and a put of a plan (or a reconnection, during which one may have been
    missed) drops what it kept, so a plan read after a put completed is that put's.
    """

    def __init__(self, js: JetStreamContext, nc: NATS | None = None) -> None:
        self._js = js
        self._nc = nc
        self._bucket: KeyValue | None = None
        self._kept: dict[str, PipelinePlan | None] = {}
        self._changes = 0
        """Puts seen (and reconnections): a read that saw one begin is not kept."""
        self._listening: Subscription | None = None
        self._reconnects = 0

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
        if self._nc is None:
            return await self._read(name)
        if self._nc.stats["reconnects"] != self._reconnects:  # puts may have been missed
            self._reconnects = self._nc.stats["reconnects"]
            self._changed()
        if name in self._kept:
            return self._kept[name]
        if self._listening is None:
            with nats_errors("listen for pipeline plans"):
                self._listening = await self._nc.subscribe(
                    f"$KV.{PIPELINE_BUCKET}.>", cb=self._on_put
                )
                await self._nc.flush()  # the server listens for us from here on
        changes = self._changes
        plan = await self._read(name)
        if changes == self._changes:
            self._kept[name] = plan
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
