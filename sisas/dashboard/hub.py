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

__all__ = ["CHANGED", "RESYNC", "Hub"]

log = logging.getLogger(__name__)

RESYNC = b"resync"
"""Put in a client's queue instead of events it missed: the page fetches its state again."""
CHANGED = b"changed"
"""Put in a run page's queue for a signal of its run: the page counts them, no more."""


class Hub:
    """Connected clients' queues, and the task that feeds them from the log."""

    def __init__(self, *, backlog: int = 2_000) -> None:
        self.backlog = backlog
        self._clients: dict[asyncio.Queue[tuple[int, bytes]], str | None] = {}
        """Each client's queue, and the one run it follows (None: every run)."""
        self.last_seq = 0
        self.published = 0
        self.listeners: list[Callable[[LogRecord], None]] = []
        """Called with every record the hub reads, in log order, before the clients hear
        of it (the dashboard's run indexes: :mod:`sisas.dashboard.app`). Must not block."""

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscribe(self, run_id: str | None = None) -> asyncio.Queue[tuple[int, bytes]]:
        """A new client's queue: every signal's event, or (``run_id``) that run's only."""
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(self.backlog)
        self._clients[queue] = run_id
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[int, bytes]]) -> None:
        self._clients.pop(queue, None)

    def wanted(self, run_id: str) -> bool:
        """Whether a client follows ``run_id`` (or every run)."""
        return any(want is None or want == run_id for want in self._clients.values())

    def _wants(self, run_id: str) -> bool | None:
        """None when no client follows ``run_id``; else whether one takes every signal
        (the runs list, ``/events``) rather than a count of one run's (a run page)."""
        found = None
        for want in self._clients.values():
            if want is None:
                return True
            if want == run_id:
                found = False
        return found

    def publish(self, stream_seq: int, data: bytes, run_id: str | None = None) -> None:
        """``data`` to the clients that follow ``run_id`` (None: to every client)."""
        self.last_seq = stream_seq
        self.published += 1
        for queue, want in list(self._clients.items()):
            if run_id is not None and want is not None and want != run_id:
                continue
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
                run_id = rec.signal.run_id
                wants = self._wants(run_id)
                if wants is None:
                    self.last_seq = rec.stream_seq
                    continue
                # A run page's stream counts its run's signals and sends none of them:
                # the event is encoded only when a client takes every signal.
                event = (
                    msgspec.json.encode(event_of(rec.stream_seq, rec.signal)) if wants else CHANGED
                )
                self.publish(rec.stream_seq, event, run_id)
            else:  # a corrupt message or a gap: the pages refetch what they show
                self.publish(
                    rec.stream_seq if isinstance(rec, CorruptMessage) else rec.last, RESYNC
                )

    async def close(self) -> None:
        for queue in list(self._clients):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((self.last_seq, b""))
        self._clients.clear()
