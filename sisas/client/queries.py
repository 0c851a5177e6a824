"""Asking the projection: over NATS when a projector serves, else by folding it here.

:func:`ask` sends ``sisas.query.<verb>`` and relays the projector's progress messages.
When no projector answers (nothing runs ``sisas up`` or ``sisas projector``), it opens
the DuckDB file in the data folder itself, catches it up with the log and answers from
it: the same code answers either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError

from sisas.bus.runtime import Bus
from sisas.errors import (
    ProjectionError,
    QueryFailed,
    SisasError,
    UnknownRun,
    UsageError,
)
from sisas.services.query import PROGRESS_HEADER, answer, local_projector
from sisas.signals.names import QUERY_PREFIX

__all__ = [
    "Answer",
    "ask",
    "projector_listening",
]

OnProgress = Callable[[str, int, int], None]

_ERRORS: dict[str, type[SisasError]] = {
    "UnknownRun": UnknownRun,
    "UsageError": UsageError,
    "ProjectionError": ProjectionError,
}


@dataclass(frozen=True)
class Answer:
    result: Any
    as_of: int
    lag: int
    served_by: str
    """``projector`` (a running projector answered over NATS) or ``local``."""


async def ask(
    bus: Bus,
    verb: str,
    params: dict[str, Any] | None = None,
    *,
    on_progress: OnProgress | None = None,
    timeout: float = 30.0,
) -> Answer:
    """The answer to ``verb``; raises the error the projector answered with."""
    payload = msgspec.json.encode(params or {})
    reply = await _over_nats(bus, verb, payload, on_progress, timeout)
    served_by = "projector"
    if reply is None:
        served_by = "local"
        reply = await _locally(bus, verb, payload, on_progress)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        kind = _ERRORS.get(str(error.get("type")), QueryFailed)
        exc = kind(str(error.get("message", "the query failed without a reason")))
        exc.exit_code = int(error.get("exit_code", 1))
        raise exc
    return Answer(
        result=reply["result"],
        as_of=int(reply.get("as_of", 0)),
        lag=int(reply.get("lag", 0)),
        served_by=served_by,
    )


async def projector_listening(bus: Bus) -> bool:
    """Whether a projector answers queries on this bus (another process may run it)."""
    try:
        return await _over_nats(bus, "runs", b'{"limit": 1}', None, 5.0) is not None
    except QueryFailed:
        return True  # something listens, if slowly: do not start a second projector


async def _over_nats(
    bus: Bus, verb: str, payload: bytes, on_progress: OnProgress | None, timeout: float
) -> dict[str, Any] | None:
    """The projector's final reply, or None when no projector listens."""
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    try:
        await bus.nc.publish(f"{QUERY_PREFIX}.{verb}", payload, reply=inbox)
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except (TimeoutError, NatsTimeoutError):
                raise QueryFailed(
                    f"the projector sent nothing for {timeout:.0f}s: it may be overloaded "
                    "or stuck; check the `sisas up` process, or stop it to query locally"
                ) from None
            headers = msg.headers or {}
            if headers.get("Status") == "503":
                return None
            if headers.get(PROGRESS_HEADER):
                if on_progress is not None:
                    p = msgspec.json.decode(msg.data)
                    on_progress(str(p["what"]), int(p["applied"]), int(p["target"]))
                continue
            decoded: dict[str, Any] = msgspec.json.decode(msg.data)
            return decoded
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _locally(
    bus: Bus, verb: str, payload: bytes, on_progress: OnProgress | None
) -> dict[str, Any]:
    async def report(what: str, applied: int, target: int) -> None:
        if on_progress is not None:
            on_progress(what, applied, target)

    def caught_up(applied: int, target: int) -> None:
        if on_progress is not None:
            on_progress("catching up", applied, target)

    async with local_projector(bus) as projector:
        if verb != "rebuild":
            await projector.catch_up(progress=caught_up)
        return await answer(projector, verb, payload, report=report, freshness=0.0)
