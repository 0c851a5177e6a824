"""Pipeline plans published in the ``sisas-pipelines`` KV bucket for orchestrators to read
(the code itself is loaded by :mod:`sisas.loader`)."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from sisas.bus.translate import nats_errors
from sisas.signals.names import PIPELINE_BUCKET
from sisas.signals.plan import PipelinePlan

__all__ = ["PlanRegistry"]


class PlanRegistry:
    """Plans by pipeline name, in a JetStream KV bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._bucket: KeyValue | None = None

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

    async def get(self, name: str) -> PipelinePlan | None:
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
