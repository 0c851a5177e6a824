"""Core NATS as a :class:`sisas.bus.ports.Wire`: presence answers, progress, commit notices."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from sisas.bus.presence import answered, answering, answers
from sisas.bus.raw_client import Client
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
    async def on_commits(self, callback: Callable[[str, bytes], None]) -> AsyncIterator[None]:
        """Every commit's notice, as it is read. On a sisas connection
        (:class:`sisas.bus.raw_client.Client`) the notice skips nats-py's ``Msg``: its
        header block (the commit's id, fence and trace) is never parsed, which was ~10%
        of ``sisas batch``'s CPU with two such watchers in the process."""
        subject = commit_subject("*", "*")
        stop: Callable[[], Awaitable[None]] | None = None
        try:
            if isinstance(self._nc, Client):
                subjects: dict[bytes, str] = {}

                def sink(subj: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
                    text = subjects.get(subj)
                    if text is None:
                        if len(subjects) > 4096:
                            subjects.clear()
                        text = subjects[subj] = subj.decode()
                    try:
                        callback(text, data)
                    except Exception:  # a watcher's bug must not reach the parser
                        log.exception("a commit watcher failed on %s", text)

                sid = await self._nc.subscribe_raw(subject, sink)
                raw = self._nc

                async def stop() -> None:
                    await raw.unsubscribe_raw(sid)
            else:

                async def deliver(msg: Msg) -> None:
                    callback(msg.subject, msg.data)

                sub = await self._nc.subscribe(subject, cb=deliver)
                stop = sub.unsubscribe
        except Exception as exc:  # a refused subscription: attempts run to their end
            log.warning("cannot watch commits on %s: %s", subject, exc)
        try:
            yield
        finally:
            if stop is not None:
                with contextlib.suppress(Exception):
                    await stop()
