"""The live stream: one ordered JetStream consumer on the log, fanned out to every
connected browser. A client that falls too far behind is told to resync, never
allowed to slow the others down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgspec

from sisas.bus.log import SignalLog
from sisas.dashboard.views import event_of
from sisas.signals import CorruptMessage, StoredSignal
from sisas.signals.records import LogRecord

__all__ = ["RESYNC", "Hub"]

log = logging.getLogger(__name__)

RESYNC = b"resync"
"""Put in a client's queue instead of events it missed: the page fetches its state again."""


class Hub:
    """Connected clients' queues, and the task that feeds them from the log."""

    def __init__(self, *, backlog: int = 2_000) -> None:
        self.backlog = backlog
        self._clients: set[asyncio.Queue[tuple[int, bytes]]] = set()
        self.last_seq = 0
        self.published = 0
        self.listeners: list[Callable[[LogRecord], None]] = []
        """Called with every record the hub reads, in log order, before the clients hear
        of it (the dashboard's run indexes: :mod:`sisas.dashboard.app`). Must not block."""

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue[tuple[int, bytes]]:
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(self.backlog)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[int, bytes]]) -> None:
        self._clients.discard(queue)

    def publish(self, stream_seq: int, data: bytes) -> None:
        self.last_seq = stream_seq
        self.published += 1
        for queue in list(self._clients):
            if queue.full():  # a stalled client: drop its backlog, tell it to refetch
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait((stream_seq, RESYNC))
            else:
                queue.put_nowait((stream_seq, data))

    async def run(self, signal_log: SignalLog) -> None:
        """Follow the log from its end, live, until cancelled."""
        start = await signal_log.last_seq() + 1
        self.last_seq = start - 1
        async for rec in signal_log.follow(from_seq=start, live=True):
            for listener in self.listeners:
                listener(rec)
            if isinstance(rec, StoredSignal):
                self.publish(
                    rec.stream_seq, msgspec.json.encode(event_of(rec.stream_seq, rec.signal))
                )
            else:  # a corrupt message or a gap: the pages refetch what they show
                self.publish(
                    rec.stream_seq if isinstance(rec, CorruptMessage) else rec.last, RESYNC
                )

    async def close(self) -> None:
        for queue in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((self.last_seq, b""))
        self._clients.clear()
