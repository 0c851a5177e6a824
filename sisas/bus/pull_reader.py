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
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from sisas.bus.raw_client import Client
from sisas.errors import AppendFailed

__all__ = ["read_range", "read_range_msgs"]

BATCH = 4096
# How long a read waits out a cluster that is electing or catching up (as an append).
PATIENCE = 30.0
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
    request = json.dumps({"stream_name": stream, "config": config}).encode()
    deadline = time.monotonic() + PATIENCE
    delay = 0.05
    while True:
        try:
            created = await nc.request(
                f"$JS.API.CONSUMER.CREATE.{stream}.{name}", request, timeout=timeout
            )
            answer = json.loads(created.data)
            error = answer.get("error")
        except (NoRespondersError, NatsTimeoutError, TimeoutError) as exc:
            error = {"code": 503, "description": str(exc) or type(exc).__name__}
        if error is None:
            return name
        # A cluster electing a leader or a replica catching up: 503 / 10008, ask again.
        transient = error.get("code") in (503, 504) or error.get("err_code") == 10008
        if not transient or time.monotonic() > deadline:
            raise AppendFailed(f"reading stream {stream} failed: {error.get('description', error)}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


_REQUEST = json.dumps({"batch": BATCH, "expires": 30_000_000_000}).encode()


# What a subscription hands the reader: (subject, reply, data) of a message, or
# (status, description) of a status message (no reply: heartbeat, nothing more to give).
_Item = tuple[str, "str | bytes", bytes] | tuple[str, str]
_Push = Callable[[_Item], None]


async def _subscribe_raw(nc: Client, inbox: str, push: _Push) -> Callable[[], Awaitable[None]]:
    """Messages straight from the protocol parser as bytes (no ``Msg``, no header dict)."""
    subjects: dict[bytes, str] = {}

    def sink(subj: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not reply:  # b"NATS/1.0 404 No Messages\r\n…"
            line = (headers or b"").split(b"\r\n", 1)[0].decode(errors="replace")
            push((line[9:12], line[13:]))
            return
        text = subjects.get(subj)
        if text is None:
            if len(subjects) > 4096:
                subjects.clear()
            text = subjects[subj] = subj.decode()
        push((text, reply, data))

    sid = await nc.subscribe_raw(inbox, sink)
    return lambda: nc.unsubscribe_raw(sid)


async def _subscribe_msgs(nc: NATS, inbox: str, push: _Push) -> Callable[[], Awaitable[None]]:
    """Messages through nats-py's public API, a ``Msg`` each."""

    async def on_msg(msg: Msg) -> None:
        if msg.reply:
            push((msg.subject, msg.reply, msg.data))
        else:
            headers = msg.headers or {}
            push((headers.get("Status", ""), headers.get("Description", "")))

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
    return sub.unsubscribe


async def read_range(
    nc: NATS, stream: str, subject: str, first: int, last: int, *, timeout: float = 5.0
) -> AsyncIterator[tuple[int, str, bytes]]:
    """(stream sequence, subject, data) of every message on ``subject`` from ``first``
    up to ``last``, in order. Raises :class:`AppendFailed` if the server refuses.

    On a :class:`sisas.bus.raw_client.Client` (every sisas connection) the messages
    skip nats-py's ``Msg`` layer; on a plain nats-py client this is
    :func:`read_range_msgs`."""
    raw = isinstance(nc, Client)
    async for item in _read(nc, stream, subject, first, last, timeout=timeout, raw=raw):
        yield item


async def read_range_msgs(
    nc: NATS, stream: str, subject: str, first: int, last: int, *, timeout: float = 5.0
) -> AsyncIterator[tuple[int, str, bytes]]:
    """:func:`read_range` through nats-py's public API only (a ``Msg`` per message):
    what plain nats-py clients read with, and the raw reference of ``bench/``."""
    async for item in _read(nc, stream, subject, first, last, timeout=timeout, raw=False):
        yield item


async def _read(
    nc: NATS, stream: str, subject: str, first: int, last: int, *, timeout: float, raw: bool
) -> AsyncIterator[tuple[int, str, bytes]]:
    if last < first:
        return
    name = await _create_consumer(nc, stream, subject, first, timeout)
    buf: collections.deque[_Item] = collections.deque()
    wake = asyncio.Event()

    def push(item: _Item) -> None:
        buf.append(item)
        wake.set()

    inbox = nc.new_inbox()
    if raw:
        assert isinstance(nc, Client)
        unsubscribe = await _subscribe_raw(nc, inbox, push)
    else:
        unsubscribe = await _subscribe_msgs(nc, inbox, push)
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
            item = buf.popleft()
            if len(item) == 2:  # a status: 100 heartbeat, 404/408 nothing (more) to give
                status, description = item
                if status in ("404", "408"):
                    await nc.publish(nxt, _REQUEST, reply=inbox)
                elif status != "100":
                    raise AppendFailed(
                        f"reading stream {stream} failed: status {status} {description}"
                    )
                continue
            subj, reply, data = item
            seq, pending = _stream_seq(reply)
            if seq > last:
                return
            yield seq, subj, data
            if seq >= last or pending == 0:
                return
            got += 1
            if got == BATCH:
                got = 0
                await nc.publish(nxt, _REQUEST, reply=inbox)
    finally:
        with contextlib.suppress(Exception):
            await unsubscribe()
        with contextlib.suppress(Exception):  # the inactive threshold reaps it otherwise
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")
