"""A durable JetStream pull consumer as a :class:`sisas.bus.ports.Feed`."""

from __future__ import annotations

import contextlib
from typing import cast

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from sisas.bus.ports import Delivery

__all__ = ["PullFeed", "pull_feed"]


class PullFeed:
    """Fetches from one pull subscription; ``close`` unsubscribes (the durable stays)."""

    def __init__(self, psub: JetStreamContext.PullSubscription) -> None:
        self._psub = psub

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        return cast(list[Delivery], await self._psub.fetch(batch, timeout=timeout))

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection may be closing
            await self._psub.unsubscribe()


async def pull_feed(
    js: JetStreamContext, stream: str, subject: str, durable: str, *, ack_wait: float
) -> PullFeed:
    """Bind (creating if needed) the durable consumer ``durable`` of ``stream``: explicit
    acks, every message from the first, up to 10,000 in flight."""
    psub = await js.pull_subscribe(
        subject,
        durable=durable,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=10_000,
        ),
    )
    return PullFeed(psub)
