"""A nats-py client that can hand a subscription's messages over raw.

nats-py turns every message into a ``Msg``: it parses the header block into a dict
(a Python loop per line), builds the object and passes it through an asyncio queue to
a task that awaits the callback. For a bulk read of the log that is ~10 µs of a ~13 µs
per-message read on this machine (docs/performance.md), and none of it is needed: the
reader wants the subject, the reply subject (the stream sequence is in it) and the
bytes. :meth:`Client.subscribe_raw` registers a plain function that the client calls
synchronously, straight from its protocol parser, with exactly those bytes.

Everything else is stock nats-py: connecting, credentials, TLS, reconnects, every other
subscription. The one override is ``_process_msg``, the method nats-py's parser calls
for each ``MSG``/``HMSG`` (its signature has been the same through nats-py 2.x;
``tests/test_log_jetstream.py`` reads every log through this path, so a change shows).
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.client import Client as NATS

__all__ = ["Client", "RawSink"]

RawSink = Callable[[bytes, bytes, bytes, bytes | None], None]
"""Called with (subject, reply, payload, header block or None) of each message."""


class Client(NATS):
    """nats-py's client, plus subscriptions whose messages skip the ``Msg`` layer."""

    def __init__(self) -> None:
        super().__init__()
        self._raw_sinks: dict[int, RawSink] = {}

    async def subscribe_raw(self, subject: str, sink: RawSink) -> int:
        """Subscribe ``subject``; each message goes to ``sink`` (which must not block and
        must not raise). Returns the subscription id for :meth:`unsubscribe_raw`."""
        sub = await self.subscribe(subject, pending_msgs_limit=0, pending_bytes_limit=0)
        self._raw_sinks[sub._id] = sink
        return int(sub._id)

    async def unsubscribe_raw(self, sid: int) -> None:
        self._raw_sinks.pop(sid, None)
        sub = self._subs.get(sid)
        if sub is not None:
            await sub.unsubscribe()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        sink = self._raw_sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sink(subject, reply, data, headers)
