"""Core NATS as a :class:`sisas.bus.ports.Wire`: presence answers, progress, commit notices."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from sisas.bus.presence import answered, answering, answers
from sisas.signals.names import commit_subject

__all__ = ["NatsWire"]

log = logging.getLogger("sisas.bus")


class NatsWire:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    @property
    def max_payload(self) -> int:
        return self._nc.max_payload

    def answering(
        self,
        subjects: Iterable[str],
        about: Mapping[str, object] | Callable[[], Mapping[str, object]],
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return answering(self._nc, subjects, about)

    async def publish(self, subject: str, payload: bytes) -> None:
        await self._nc.publish(subject, payload)

    async def answered(self, subject: str, *, timeout: float) -> bool:
        return await answered(self._nc, subject, timeout)

    async def answers(self, subject: str, *, quiet: float, timeout: float) -> list[dict[str, Any]]:
        return await answers(self._nc, subject, quiet=quiet, timeout=timeout)

    @contextlib.asynccontextmanager
    async def on_commits(
        self, callback: Callable[[str, bytes], Awaitable[None]]
    ) -> AsyncIterator[None]:
        async def deliver(msg: Msg) -> None:
            await callback(msg.subject, msg.data)

        subject = commit_subject("*", "*")
        sub = None
        try:
            sub = await self._nc.subscribe(subject, cb=deliver)
        except Exception as exc:  # a refused subscription: attempts run to their end
            log.warning("cannot watch commits on %s: %s", subject, exc)
        try:
            yield
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
