"""Pipeline plans published in the ``sisas-pipelines`` KV bucket for orchestrators to read
(the code itself is loaded by :mod:`sisas.loader`)."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from sisas.errors import BusError
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
        try:
            kv = await self._kv()
            await kv.put(plan.name, msgspec.json.encode(plan))
        except Exception as exc:  # NATS errors never leave bus/
            raise BusError(
                f"could not register pipeline {plan.name}: {exc}; is JetStream "
                "reachable and the sisas-pipelines bucket writable?"
            ) from None

    async def get(self, name: str) -> PipelinePlan | None:
        try:
            kv = await self._kv()
            entry = await kv.get(name)
        except (KeyNotFoundError, NotFoundError):
            return None
        except Exception as exc:  # NATS errors never leave bus/
            raise BusError(f"could not read the plan of pipeline {name}: {exc}") from None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=PipelinePlan)

    async def names(self) -> list[str]:
        try:
            kv = await self._kv()
            return sorted(await kv.keys())
        except (NoKeysError, NotFoundError):  # an empty bucket
            return []
        except Exception as exc:  # NATS errors never leave bus/
            raise BusError(f"could not list the registered pipelines: {exc}") from None
