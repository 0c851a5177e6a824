"""The query service: the projector answers ``sisas.query.<verb>`` over NATS request/reply.

Any machine of a cluster can ask; any projector (queue group ``sisas-projectors``)
answers. Before answering it waits (a few seconds at most) until it has folded the log
up to where the log ended when the question arrived, so ``sisas run --wait`` followed
by ``sisas show`` sees the run's end. While it works it sends progress messages (header
``Sisas-Progress``) to the reply inbox, then one final answer::

    {"ok": true, "as_of": 1234, "lag": 0, "result": ...}
    {"ok": false, "error": {"type": "UnknownRun", "message": "...", "exit_code": 2}}

A request that cannot be decoded gets an ``ok: false`` answer naming the bad field and
is logged; it never stops the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.errors import SisasError, UsageError
from sisas.projections import queries
from sisas.projections.projector import Projector
from sisas.projections.store import ProjectionStore, translated
from sisas.services.rebuild import fold_in_processes
from sisas.signals.names import QUERY_GROUP, QUERY_PREFIX, QUERY_VERBS

__all__ = [
    "PROJECTION_FILE",
    "local_projector",
    "projection_path",
    "PROGRESS_HEADER",
    "QueryService",
    "answer",
    "failure",
]

log = logging.getLogger(__name__)

PROGRESS_HEADER: Final = "Sisas-Progress"

Report = Callable[[str, int, int], Coroutine[Any, Any, None]]
"""Progress callback: (what, applied stream sequence, target sequence)."""

_QUERIES: dict[str, tuple[type[Any], Callable[..., Any]]] = {
    "runs": (queries.RunsQuery, queries.runs),
    "show": (queries.RunQuery, queries.run_detail),
    "manifest": (queries.RunQuery, queries.manifest),
    "stats": (queries.StatsQuery, queries.stats),
    "states": (queries.StatesQuery, queries.states),
    "tables": (queries.TablesQuery, queries.tables),
}


class _NoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class _RebuildParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    jobs: int = 1
    """Processes folding the log again (one writes)."""


def _params(verb: str, payload: bytes) -> Any:
    kind = _QUERIES[verb][0] if verb in _QUERIES else _NoParams
    if verb == "rebuild":
        kind = _RebuildParams
    try:
        return msgspec.json.decode(payload or b"{}", type=kind)
    except msgspec.DecodeError as exc:
        raise UsageError(f"query {verb!r} has bad parameters: {exc}") from None


async def answer(
    projector: Projector, verb: str, payload: bytes, *, report: Report, freshness: float = 5.0
) -> dict[str, Any]:
    """The final answer to one query (raises :class:`SisasError` for the error answer)."""
    if verb not in QUERY_VERBS:
        raise UsageError(f"unknown query {verb!r}: ask one of {', '.join(QUERY_VERBS)}")
    params = _params(verb, payload)
    if verb == "rebuild":
        return await _rebuild(projector, report, max(1, params.jobs))
    target = await projector.log.last_seq()
    if verb != "status":
        await _wait_fresh(projector, target, freshness, report)

    def query(store: ProjectionStore) -> tuple[int, Any]:
        # Runs between two batches (in the projector's writer thread while it runs):
        # the store holds exactly the log up to applied_seq.
        with translated(f"the {verb} query"):
            as_of = projector.applied_seq
            if verb == "status":
                result: Any = {
                    "applied_seq": as_of,
                    "log_last_seq": target,
                    "tables": store.counts(),
                    "path": str(store.path) if store.path else ":memory:",
                }
            elif verb == "digest":
                result = {"stream_seq": as_of, "digest": store.digest()}
            else:
                result = _QUERIES[verb][1](store.con, params)
        return as_of, result

    as_of, result = await projector.read(query)
    return {"ok": True, "as_of": as_of, "lag": max(0, target - as_of), "result": result}


async def _wait_fresh(projector: Projector, target: int, freshness: float, report: Report) -> None:
    deadline = time.monotonic() + freshness
    while projector.applied_seq < target:
        left = deadline - time.monotonic()
        if left <= 0:
            return  # answer anyway; ``lag`` says how far behind
        await projector.wait_applied(target, min(left, 1.0))
        await report("catching up", projector.applied_seq, target)


async def _rebuild(projector: Projector, report: Report, jobs: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def progress(applied: int, target: int) -> None:
        task = loop.create_task(report("rebuilding", applied, target))
        pending.add(task)
        task.add_done_callback(pending.discard)

    result = await projector.rebuild(progress=progress, jobs=jobs)
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    counts = await projector.read(ProjectionStore.counts)
    return {
        "ok": True,
        "as_of": result.stream_seq,
        "lag": 0,
        "result": {
            "before": result.before,
            "after": result.after,
            "equal": result.equal,
            "stream_seq": result.stream_seq,
            "seconds": result.seconds,
            "jobs": jobs if projector.shared_fold is not None else 1,
            "tables": counts,
        },
    }


HEADROOM: Final = 1024
"""Bytes of max_payload left for the reply's protocol line and headers."""

MAX_MESSAGE: Final = 500
"""Characters of an error message kept: it may quote a huge parameter of the query, and
an answer past the server's max payload would never reach the asker."""


def _short(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE]}… ({len(message)} characters)"


def failure(exc: SisasError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "type": type(exc).__name__,
            "message": _short(str(exc)),
            "exit_code": exc.exit_code,
        },
    }


class QueryService:
    """Serves queries for ``projector`` on ``sisas.query.*`` until stopped."""

    def __init__(self, nc: NATS, projector: Projector, *, freshness: float = 5.0) -> None:
        self.nc = nc
        self.projector = projector
        self.freshness = freshness
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(
            f"{QUERY_PREFIX}.*", queue=QUERY_GROUP, cb=self._on_request
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        verb = msg.subject.removeprefix(f"{QUERY_PREFIX}.")
        if not msg.reply:
            log.warning("query %s without a reply subject: ignored", msg.subject)
            return

        async def report(what: str, applied: int, target: int) -> None:
            body = msgspec.json.encode({"what": what, "applied": applied, "target": target})
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, body, headers={PROGRESS_HEADER: "1"})

        try:
            reply = await answer(
                self.projector, verb, msg.data, report=report, freshness=self.freshness
            )
        except SisasError as exc:
            log.warning("query %s refused: %s", msg.subject, _short(str(exc)))
            reply = failure(exc)
        except Exception as exc:  # a bug: answer it, log it, keep serving
            log.exception("query %s failed", msg.subject)
            reply = {
                "ok": False,
                "error": {"type": type(exc).__name__, "message": _short(str(exc)), "exit_code": 1},
            }
        body = msgspec.json.encode(reply)
        limit = self.nc.max_payload
        if len(body) > limit - HEADROOM:  # the server would refuse it: the asker would wait
            too_big = UsageError(
                f"the {verb} answer is {len(body):,} bytes, more than the server's "
                f"max_payload of {limit:,} allows: ask for less (a smaller --limit, one "
                "run, a narrower filter) or raise max_payload in the server's config"
            )
            log.warning("query %s: %s", msg.subject, too_big)
            body = msgspec.json.encode(failure(too_big))
        with contextlib.suppress(Exception):
            await self.nc.publish(msg.reply, body)


PROJECTION_FILE: Final = "projection.duckdb"
"""The projection's DuckDB file in the data folder."""


def projection_path(settings: Settings) -> Path:
    return settings.home / PROJECTION_FILE


@contextlib.asynccontextmanager
async def local_projector(bus: Bus, *, batch_size: int = 5_000) -> AsyncIterator[Projector]:
    """A projector on the data folder's DuckDB file, opened (and closed) here."""
    store = ProjectionStore(projection_path(bus.settings))
    try:
        yield Projector(
            bus.log,
            store,
            identity=await bus.log.identity(),
            batch_size=batch_size,
            shared_fold=functools.partial(fold_in_processes, bus.settings),
        )
    finally:
        store.close()
