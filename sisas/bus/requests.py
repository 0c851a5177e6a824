"""Pipelined request/reply on one connection, leaner than nats-py's JetStream layer.

One wildcard inbox subscription resolves a future per request, so many appends can be
in flight at once without a task, a timer or a parsed PubAck object each. See
docs/performance.md for why this path exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["ApiError", "PubAck", "Requester", "Reply"]


class ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct, frozen=True):
    """The server's answer to a JetStream publish."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


PUBACK_DECODER: Final = msgspec.json.Decoder(PubAck)


class Reply(msgspec.Struct, frozen=True):
    """A reply message: its status (e.g. ``"503"``, ``"404"``, or ``""``), headers, data."""

    status: str
    headers: dict[str, str]
    data: bytes


def _expire(fut: asyncio.Future[Reply]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Requester:
    """Sends requests whose replies arrive on one shared wildcard inbox."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._sub: Subscription | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Subscribe to the reply inbox, once: calling it again, even concurrently, does
        nothing (a second subscription would deliver every reply twice)."""
        if self._sub is not None:
            return
        async with self._starting:
            if self._sub is None:
                self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # connection closed: nothing to release
                await sub.unsubscribe()
        for fut in self._waiting.values():
            fut.cancel()
        self._waiting.clear()

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix) + 1 :], None)
        if fut is None or fut.done():
            return  # a reply after its request timed out
        headers = dict(msg.headers) if msg.headers else {}
        status = headers.pop("Status", "")
        fut.set_result(Reply(status=status, headers=headers, data=msg.data))

    async def request(
        self, subject: str, payload: bytes, *, headers: dict[str, str] | None, timeout: float
    ) -> Reply:
        """Publish and wait for the reply. Raises ``TimeoutError`` after ``timeout`` s."""
        token = str(next(self._ids))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self._waiting[token] = fut
        # One timer handle per request: much cheaper than asyncio.wait_for.
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
            return await fut
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
