"""Who is live on the bus: the workers of a pipeline, the orchestrators.

Presence is an answer, not a record. A worker answers ``sisas.presence.worker.<pipeline>``
for each pipeline it runs, an orchestrator answers ``sisas.presence.orchestrator``, only
while its loop runs and its connection is up; asking is one core NATS request that the
server answers at once with "no responders" when nobody listens. So a worker that died,
or the worker a finished ``sisas run`` hosted for its own duration, is never counted,
whereas a plan in the ``sisas-pipelines`` bucket outlives every worker that registered it
(a plan says a pipeline *was* served once, not that it is). Interest in a subject spreads
to every node of a NATS cluster, so a worker on any machine answers a question asked on
any other, with no clock, heartbeat interval or expiry to tune.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from sisas.bus.ports import Wire
from sisas.bus.translate import nats_errors
from sisas.signals.names import PRESENCE_PREFIX

__all__ = [
    "ORCHESTRATOR_SUBJECT",
    "answered",
    "answering",
    "answers",
    "live_workers",
    "orchestrator_live",
    "worker_live",
    "worker_subject",
]

ORCHESTRATOR_SUBJECT: Final = f"{PRESENCE_PREFIX}.orchestrator"
ASK_TIMEOUT: Final = 2.0
"""Seconds to wait for an answer once someone listens (a live process answers in ms)."""


def worker_subject(pipeline: str) -> str:
    """The subject a worker of ``pipeline`` answers on."""
    return f"{PRESENCE_PREFIX}.worker.{pipeline}"


@contextlib.asynccontextmanager
async def answering(
    nc: NATS,
    subjects: Iterable[str],
    about: Mapping[str, object] | Callable[[], Mapping[str, object]],
) -> AsyncIterator[None]:
    """Answer presence requests on ``subjects`` with ``about`` (JSON; a callable is asked
    at each request, so a worker that reloads its code answers with the new one) inside
    the block.

    A subscription the server refuses (a role without the permission) only means this
    process is not seen as live; it never stops the caller's work.
    """

    async def reply(msg: Msg) -> None:
        if msg.reply:
            facts = about() if callable(about) else about
            payload = json.dumps(dict(facts), sort_keys=True).encode()
            with contextlib.suppress(Exception):  # the asker may be gone already
                await msg.respond(payload)

    subs = []
    for subject in subjects:
        with contextlib.suppress(Exception):
            subs.append(await nc.subscribe(subject, cb=reply))
    try:
        yield
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):  # the connection may be closing
                await sub.unsubscribe()


async def answered(nc: NATS, subject: str, timeout: float) -> bool:
    """Whether anyone answers a request on ``subject`` now (core NATS)."""
    with nats_errors(f"ask who serves {subject}"):
        try:
            await nc.request(subject, b"", timeout=timeout)
            return True
        except NoRespondersError:
            return False
        except (TimeoutError, NatsTimeoutError):
            return False  # someone listens but cannot answer: not live for our purpose


async def answers(nc: NATS, subject: str, *, quiet: float, timeout: float) -> list[dict[str, Any]]:
    """Every answer to one request on ``subject`` (core NATS), gathered until none came
    for ``quiet`` seconds; [] when nobody listens."""
    inbox = nc.new_inbox()
    out: list[dict[str, Any]] = []
    with nats_errors(f"ask who answers {subject}"):
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(subject, b"", reply=inbox)
            wait = timeout
            while True:
                try:
                    msg = await sub.next_msg(timeout=wait)
                except (TimeoutError, NatsTimeoutError):
                    return out
                if (msg.headers or {}).get("Status") == "503":
                    return out  # no responders
                with contextlib.suppress(ValueError):
                    out.append(json.loads(msg.data))
                wait = quiet
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def worker_live(wire: Wire, pipeline: str, *, timeout: float = ASK_TIMEOUT) -> bool:
    """Whether a live worker (any process, any node) runs ``pipeline``'s phases now."""
    return await wire.answered(worker_subject(pipeline), timeout=timeout)


async def live_workers(
    wire: Wire, pipeline: str, *, quiet: float = 0.3, timeout: float = ASK_TIMEOUT
) -> list[dict[str, Any]]:
    """What every live worker of ``pipeline`` says of itself (``worker``, ``pipelines``,
    ``fingerprints``: the code fingerprint of each pipeline it runs); [] when none is
    live. Answers are gathered until none came for ``quiet`` seconds."""
    return await wire.answers(worker_subject(pipeline), quiet=quiet, timeout=timeout)


async def orchestrator_live(wire: Wire, *, timeout: float = ASK_TIMEOUT) -> bool:
    """Whether a live orchestrator consumes ``SISAS_IN`` now."""
    return await wire.answered(ORCHESTRATOR_SUBJECT, timeout=timeout)
