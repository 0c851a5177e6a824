"""Work offered to workers, apart from the record: the ``SISAS_WORK`` work queue.

The log holds commits (a decision's signals in one message), so no log subject names
a single scheduled attempt. Once a commit holding ``phase_scheduled`` signals is
acknowledged by the log, the orchestrator offers each of them here, on
``sisas.work.<pipeline>.<run>``: the scheduled signal's own canonical bytes (so its
hash and signature are checked by the worker as before), with the stream sequence of
the commit it is stored in (header ``Sisas-Log-Seq``) and ``Nats-Msg-Id`` set to the
signal's id (an offer made twice is stored once). A worker therefore never executes
work that is not yet durable in the log.

The queue is a JetStream work-queue stream: one durable consumer per pipeline takes
each offer once, redelivered after ``ack_wait`` if its worker dies. If an orchestrator
dies between a commit and its offers, the input that caused the commit is redelivered,
deciding it again changes nothing, and the orchestrator re-offers what its folded state
shows scheduled and not started (:meth:`WorkQueue.offer` is idempotent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from nats.aio.client import Client as NATS

from sisas.bus.consumers import PullFeed, pull_feed
from sisas.bus.ports import Delivery
from sisas.bus.requests import PUBACK_DECODER, Requester
from sisas.errors import AppendFailed, SignalError
from sisas.signals.codec import decode_signal, encode_signal
from sisas.signals.names import WORK_PREFIX, WORK_STREAM, work_subject
from sisas.signals.records import CorruptMessage, StoredSignal
from sisas.telemetry.tracing import inject

__all__ = ["LOG_SEQ_HEADER", "WorkQueue", "log_seq", "work_record"]

LOG_SEQ_HEADER = "Sisas-Log-Seq"
"""Header of an offer: the stream sequence of the commit holding the scheduled signal."""


def log_seq(msg: Delivery) -> int:
    """The stream sequence of the commit holding the offered signal (0 when unsaid)."""
    value = (msg.headers or {}).get(LOG_SEQ_HEADER, "0")
    return int(value) if value.isdigit() else 0


def work_record(msg: Delivery) -> StoredSignal | CorruptMessage:
    """The scheduled signal an offer holds, checked as a log reader checks it."""
    seq = log_seq(msg)
    try:
        signal = decode_signal(msg.data)
    except SignalError as exc:
        return CorruptMessage(
            stream_seq=seq, subject=msg.subject, reason=str(exc), size=len(msg.data)
        )
    return StoredSignal(stream_seq=seq, signal=signal)


class WorkQueue:
    """Offers scheduled attempts to workers (one publish each, pipelined)."""

    def __init__(self, nc: NATS, *, timeout: float = 5.0, patience: float = 30.0) -> None:
        self._js = nc.jetstream(timeout=timeout)
        self._requests = Requester(nc)
        self._timeout = timeout
        self._patience = patience

    async def close(self) -> None:
        await self._requests.close()

    async def consume(self, pipeline: str, *, ack_wait: float) -> PullFeed:
        """The offers of ``pipeline``: one durable consumer (``worker-<pipeline>``) that
        all its workers share, so each offer is taken once."""
        return await pull_feed(
            self._js,
            WORK_STREAM,
            f"{WORK_PREFIX}.{pipeline}.>",
            f"worker-{pipeline}",
            ack_wait=ack_wait,
        )

    async def offer(self, scheduled: Iterable[StoredSignal]) -> int:
        """Offer each scheduled signal (already durable in the log); how many were new
        to the queue. Retries transient failures for ``patience`` seconds, then raises
        :class:`AppendFailed` (the caller leaves its input unacknowledged: redelivered,
        it is offered again)."""
        items = list(scheduled)
        if not items:
            return 0
        await self._requests.start()
        results = await asyncio.gather(*(self._offer_one(rec) for rec in items))
        return sum(results)

    async def _offer_one(self, rec: StoredSignal) -> int:
        s = rec.signal
        subject = work_subject(s.pipeline, s.run_id)
        data = encode_signal(s)
        headers = inject({"Nats-Msg-Id": s.id, LOG_SEQ_HEADER: str(rec.stream_seq)})
        deadline = time.monotonic() + self._patience
        delay = 0.05
        while True:
            try:
                reply = await self._requests.request(
                    subject, data, headers=headers, timeout=self._timeout
                )
                if reply.status == "":
                    ack = PUBACK_DECODER.decode(reply.data)
                    if ack.error is None:
                        return 0 if ack.duplicate else 1
                    problem = f"{ack.error.description} (code {ack.error.err_code})"
                else:
                    problem = f"status {reply.status}"
            except TimeoutError:
                problem = "timeout"
            if time.monotonic() > deadline:
                raise AppendFailed(
                    f"offering {s.id} to workers failed: {problem}; is the server up? "
                    "The input is redelivered and the work offered again"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
