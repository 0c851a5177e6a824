"""Reading a stream range fast: an ephemeral pull consumer driven by raw requests.

nats-py's ordered push consumer builds a ``Msg`` with parsed metadata for every message
and hands it through two queues: ~50,000 messages/s here. This reader creates an
ephemeral pull consumer (no acks, memory storage, reaped by the server 30 s after we
stop asking), keeps two ``MSG.NEXT`` requests of 4,096 messages in flight and takes the
stream sequence from the reply subject. Through nats-py's ``Msg`` layer that reads
~65,000 messages/s (:func:`read_range_msgs`); on a sisas connection
(:class:`sisas.bus.raw_client.Client`) the messages go from the protocol parser straight
to this reader as bytes: ~110,000/s (docs/performance.md). It is for catching up to a
known end; live following stays on the ordered push consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from sisas.bus.raw_client import Client
from sisas.errors import AppendFailed

__all__ = ["read_range", "read_range_msgs"]

BATCH = 4096
IN_FLIGHT = 2


def _stream_seq(reply: str | bytes) -> tuple[int, int]:
    """(stream sequence, pending) from a ``$JS.ACK`` reply subject, v1 or v2 form."""
    t = reply.split(b"." if isinstance(reply, bytes) else ".")  # type: ignore[arg-type]
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(t[5]), int(t[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>…
    return int(t[7]), int(t[10])


async def _create_consumer(nc: NATS, stream: str, subject: str, first: int, timeout: float) -> str:
    """An ephemeral pull consumer from ``first`` (no acks, memory, reaped when idle)."""
    name = "sisas-read-" + nc.new_inbox().rsplit(".", 1)[-1]
    config = {
        "name": name,
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": first,
        "ack_policy": "none",
        "replay_policy": "instant",
        "filter_subject": subject,
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": 30_000_000_000,
    }
    created = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
        json.dumps({"stream_name": stream, "config": config}).encode(),
        timeout=timeout,
    )
    answer = json.loads(created.data)
    if "error" in answer:
        raise AppendFailed(
            f"reading stream {stream} failed: {answer['error'].get('description', answer)}"
        )
    return name


_REQUEST = json.dumps({"batch": BATCH, "expires": 30_000_000_000}).encode()


def _status_failure(stream: str, status: str, description: str) -> AppendFailed:
    return AppendFailed(f"reading stream {stream} failed: status {status} {description}")


async def read_range(
    nc: NATS, stream: str, subject: str, first: int, last: int, *, timeout: float = 5.0
) -> AsyncIterator[tuple[int, str, bytes]]:
    """(stream sequence, subject, data) of every message on ``subject`` from ``first``
    up to ``last``, in order. Raises :class:`AppendFailed` if the server refuses.

    On a :class:`sisas.bus.raw_client.Client` (every sisas connection) the messages
    skip nats-py's ``Msg`` layer; on a plain nats-py client this is
    :func:`read_range_msgs`."""
    if not isinstance(nc, Client):
        async for item in read_range_msgs(nc, stream, subject, first, last, timeout=timeout):
            yield item
        return
    if last < first:
        return
    name = await _create_consumer(nc, stream, subject, first, timeout)
    buf: collections.deque[tuple[bytes, bytes, bytes, bytes | None]] = collections.deque()
    wake = asyncio.Event()

    def sink(subj: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        buf.append((subj, reply, data, headers))
        wake.set()

    inbox = nc.new_inbox()
    sid = await nc.subscribe_raw(inbox, sink)
    nxt = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    try:
        for _ in range(IN_FLIGHT):
            await nc.publish(nxt, _REQUEST, reply=inbox)
        got = 0
        subjects: dict[bytes, str] = {}
        while True:
            if not buf:
                wake.clear()
                await wake.wait()
                continue
            subj, reply, data, headers = buf.popleft()
            if not reply:  # a status: 100 heartbeat, 404/408 nothing (more) to give
                line = (headers or b"").split(b"\r\n", 1)[0].decode(errors="replace")
                status = line[9:12]
                if status in ("404", "408"):
                    await nc.publish(nxt, _REQUEST, reply=inbox)
                elif status != "100":
                    raise _status_failure(stream, status, line[13:])
                continue
            seq, pending = _stream_seq(reply)
            if seq > last:
                return
            text = subjects.get(subj)
            if text is None:
                if len(subjects) > 4096:
                    subjects.clear()
                text = subjects[subj] = subj.decode()
            yield seq, text, data
            if seq >= last or pending == 0:
                return
            got += 1
            if got == BATCH:
                got = 0
                await nc.publish(nxt, _REQUEST, reply=inbox)
    finally:
        with contextlib.suppress(Exception):
            await nc.unsubscribe_raw(sid)
        with contextlib.suppress(Exception):  # the inactive threshold reaps it otherwise
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")


async def read_range_msgs(
    nc: NATS, stream: str, subject: str, first: int, last: int, *, timeout: float = 5.0
) -> AsyncIterator[tuple[int, str, bytes]]:
    """:func:`read_range` through nats-py's public API only (a ``Msg`` per message):
    what plain nats-py clients read with, and the raw reference of ``bench/``."""
    if last < first:
        return
    name = await _create_consumer(nc, stream, subject, first, timeout)
    inbox = nc.new_inbox()
    buf: collections.deque[Msg] = collections.deque()
    wake = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        buf.append(msg)
        wake.set()

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
    nxt = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    try:
        for _ in range(IN_FLIGHT):
            await nc.publish(nxt, _REQUEST, reply=inbox)
        got = 0
        while True:
            if not buf:
                wake.clear()
                await wake.wait()
                continue
            msg = buf.popleft()
            if not msg.reply:  # a status: 100 heartbeat, 404/408 nothing (more) to give
                status = (msg.headers or {}).get("Status", "")
                if status in ("404", "408"):
                    await nc.publish(nxt, _REQUEST, reply=inbox)
                elif status != "100":
                    raise _status_failure(
                        stream, status, (msg.headers or {}).get("Description", "")
                    )
                continue
            seq, pending = _stream_seq(msg.reply)
            if seq > last:
                return
            yield seq, msg.subject, msg.data
            if seq >= last or pending == 0:
                return
            got += 1
            if got == BATCH:
                got = 0
                await nc.publish(nxt, _REQUEST, reply=inbox)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):  # the inactive threshold reaps it otherwise
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")
