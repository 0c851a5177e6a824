"""Reading a stream range fast: an ephemeral pull consumer driven by raw requests.

nats-py's ordered push consumer builds a ``Msg`` with parsed metadata for every message
and hands it through two queues: ~50,000 messages/s here. This reader creates an
ephemeral pull consumer (no acks, memory storage, reaped by the server 30 s after we
stop asking), keeps two ``MSG.NEXT`` requests of 4,096 messages in flight and takes the
stream sequence from the reply subject: ~100,000 messages/s with public nats-py API
only (measured in docs/performance.md). It is for catching up to a known end; live
following stays on the ordered push consumer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from sisas.errors import AppendFailed

__all__ = ["read_range"]

BATCH = 4096
IN_FLIGHT = 2


def _stream_seq(reply: str) -> tuple[int, int]:
    """(stream sequence, pending) from a ``$JS.ACK`` reply subject, v1 or v2 form."""
    t = reply.split(".")
    if len(t) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
        return int(t[5]), int(t[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>…
    return int(t[7]), int(t[10])


async def read_range(
    nc: NATS, stream: str, subject: str, first: int, last: int, *, timeout: float = 5.0
) -> AsyncIterator[tuple[int, str, bytes]]:
    """(stream sequence, subject, data) of every message on ``subject`` from ``first``
    up to ``last``, in order. Raises :class:`AppendFailed` if the server refuses."""
    if last < first:
        return
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
    inbox = nc.new_inbox()
    buf: collections.deque[Msg] = collections.deque()
    wake = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        buf.append(msg)
        wake.set()

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
    nxt = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"
    request = json.dumps({"batch": BATCH, "expires": 30_000_000_000}).encode()
    try:
        for _ in range(IN_FLIGHT):
            await nc.publish(nxt, request, reply=inbox)
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
                    await nc.publish(nxt, request, reply=inbox)
                elif status != "100":
                    raise AppendFailed(
                        f"reading stream {stream} failed: status {status} "
                        f"{(msg.headers or {}).get('Description', '')}"
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
                await nc.publish(nxt, request, reply=inbox)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):  # the inactive threshold reaps it otherwise
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")
