"""The dashboard's web app: pages, a read-only JSON API and the live event stream.

Every route is a GET: the dashboard can read runs, never start, cancel or change one
(it holds no publish path to the command subjects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from html import escape
from importlib import resources
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sisas import __version__
from sisas.audit.html import render_report
from sisas.bus.runtime import Bus
from sisas.client.queries import ask
from sisas.client.verification import verify_log
from sisas.dashboard.detail import RunDetail
from sisas.dashboard.hub import RESYNC, Hub
from sisas.dashboard.index import RunIndex
from sisas.dashboard.views import (
    ITEM_ORDERS,
    MAX_PAGE,
    checks_page,
    items_page,
    run_view,
)
from sisas.errors import SisasError
from sisas.handlers.state import fold
from sisas.handlers.tables import PhaseStatus
from sisas.signals import CorruptMessage, StoredSignal
from sisas.signals.names import check_name
from sisas.signals.records import LogRecord

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_STATUSES = {"requested", "running", "completed", "failed", "cancelled"}
HEARTBEAT = 15.0
MAX_LIMIT = 1000


def _page(name: str) -> HTMLResponse:
    text = resources.files("sisas.dashboard").joinpath("static", name).read_text()
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _runs_params(q: QueryParams) -> dict[str, Any]:
    """The ``runs`` query of ``GET /api/runs?pipeline=&status=&limit=``; raises
    ValueError saying which parameter is wrong and what it takes (a 400, not a 500)."""
    params: dict[str, Any] = {"limit": 200}
    raw = q.get("limit", "")
    if raw:
        if not raw.isdecimal() or not 1 <= int(raw) <= MAX_LIMIT:
            raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}")
        params["limit"] = int(raw)
    if q.get("pipeline"):
        try:
            params["pipeline"] = check_name(q["pipeline"], "pipeline name")
        except SisasError as exc:
            raise ValueError(str(exc)) from None
    if q.get("status"):
        if q["status"] not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(sorted(_STATUSES))}")
        params["status"] = q["status"]
    return params


T = TypeVar("T")
_ITEM_STATUSES = set(PhaseStatus.__args__)  # type: ignore[attr-defined]
MAX_QUERY = 200


def _page_params(q: QueryParams) -> dict[str, Any]:
    """``offset``, ``limit`` and ``q`` of a paged API; raises ValueError saying which is
    wrong and what it takes (a 400, not a 500)."""
    params: dict[str, Any] = {"offset": 0, "limit": 50, "q": q.get("q", "")}
    for name, low, high in (("offset", 0, 10**9), ("limit", 1, MAX_PAGE)):
        raw = q.get(name, "")
        if raw:
            if not raw.isdecimal() or not low <= int(raw) <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}, not {raw!r}")
            params[name] = int(raw)
    if len(params["q"]) > MAX_QUERY:
        raise ValueError(f"q must be at most {MAX_QUERY} characters")
    return params


class _Kept:
    """A run's index, and the records the hub read for it since (not yet taken)."""

    __slots__ = ("index", "pending", "stale")

    def __init__(self) -> None:
        self.index: RunIndex | None = None
        self.pending: list[StoredSignal | CorruptMessage] = []
        self.stale = False


class _Details:
    """The indexes of the runs lately asked for (:class:`RunIndex`), kept current from
    the hub's records of them: a page load of a live run takes in the signals since the
    last load, O(new signals), instead of reading and folding the whole run again. An
    index that cannot be continued (a record out of order, a gap, a message that is not
    a signal) is built again from the log; the log's last record of the run says
    whether an index is current."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._kept: dict[str, _Kept] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def feed(self, record: LogRecord) -> None:
        """The hub read ``record``: the index of its run, if kept, takes it at its next
        use. O(1): called on the event loop for every record of the log."""
        if isinstance(record, StoredSignal):
            kept = self._kept.get(record.signal.run_id)
            if kept is not None:
                kept.pending.append(record)
        else:  # whose run is unknown: every index is built again when next asked for
            for kept in self._kept.values():
                kept.stale = True

    async def use(self, bus: Bus, run_id: str, view: Callable[[RunDetail], T]) -> T | None:
        """``view`` of the run's current detail, computed off the event loop (the loop
        may be the one that orchestrates: `sisas up`) while no update of the run runs;
        None when the log holds no run ``run_id``. Raises SisasError when the log cannot
        be read."""
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:  # one update or view of a run at a time, however many ask
            detail = await self._current(bus, run_id)
            return None if detail is None else await asyncio.to_thread(view, detail)

    async def _current(self, bus: Bus, run_id: str) -> RunDetail | None:
        last = await bus.log.last_of_run(run_id)
        if last is None:
            return None
        kept = self._kept.get(run_id)
        if kept is not None and kept.index is not None and not kept.stale:
            index, pending = kept.index, kept.pending
            kept.pending = []
            if await asyncio.to_thread(index.catch_up, pending) and index.at(last):
                return index.detail
        kept = self._kept[run_id] = _Kept()  # collects what the hub reads from now on
        self._evict()
        records = await bus.log.read_run(run_id)  # holds every record read before
        if not any(isinstance(r, StoredSignal) for r in records):
            del self._kept[run_id]
            return None
        index = await asyncio.to_thread(RunIndex.of, records)
        kept.index = index
        pending, kept.pending = kept.pending, []
        await asyncio.to_thread(index.catch_up, pending)  # a gap: built again next time
        return index.detail

    def _evict(self) -> None:
        while len(self._kept) > self.size:
            old = next(iter(self._kept))
            del self._kept[old]
            self._locks.pop(old, None)


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _run_json(detail: RunDetail) -> bytes:
    view = run_view(detail=detail)
    view["corrupt"] = detail.corrupt
    return msgspec.json.encode(view)


def create_app(bus: Bus, hub: Hub) -> Starlette:
    """The app over ``bus`` (queries and the log) and ``hub`` (the live stream)."""

    async def index(request: Request) -> Response:
        return _page("index.html")

    async def run_page(request: Request) -> Response:
        return _page("run.html")

    async def api_runs(request: Request) -> Response:
        try:
            params = _runs_params(request.query_params)
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            answer = await ask(bus, "runs", params, timeout=10)
        except SisasError as exc:
            return _error(503, f"the projection cannot answer: {exc}")
        return JSONResponse({"as_of": answer.as_of, "lag": answer.lag, "runs": answer.result})

    details = _Details()
    hub.listeners.append(details.feed)

    async def run_view_of(request: Request, view: Callable[[RunDetail], T]) -> T | Response:
        """``view`` of the run the request names, or the error response."""
        run_id = request.path_params["run_id"]
        try:
            check_name(run_id, "run id")
        except SisasError as exc:
            return _error(400, str(exc))
        try:
            answer = await details.use(bus, run_id, view)
        except SisasError as exc:
            return _error(503, f"the log cannot be read: {exc}")
        return _error(404, f"no run {run_id}") if answer is None else answer

    async def api_run(request: Request) -> Response:
        body = await run_view_of(request, _run_json)
        return body if isinstance(body, Response) else _json(body)

    async def api_items(request: Request) -> Response:
        """``GET /api/runs/RUN/phases/PHASE/items?offset=&limit=&q=&status=&order=``"""
        q = request.query_params
        try:
            params = _page_params(q)
            if q.get("status") and q["status"] not in _ITEM_STATUSES:
                raise ValueError(f"status must be one of {', '.join(sorted(_ITEM_STATUSES))}")
            if q.get("order") and q["order"] not in ITEM_ORDERS:
                raise ValueError(f"order must be one of {', '.join(ITEM_ORDERS)}")
        except ValueError as exc:
            return _error(400, str(exc))
        phase = request.path_params["phase"]
        status, order = q.get("status", ""), q.get("order") or "problems"

        def page(detail: RunDetail) -> bytes | Response:
            found = items_page(detail, phase, status=status, order=order, **params)
            if found is None:
                return _error(404, f"no fanned-out phase {phase!r} in run {detail.state.run_id}")
            return msgspec.json.encode(found)

        body = await run_view_of(request, page)
        return body if isinstance(body, Response) else _json(body)

    async def api_checks(request: Request) -> Response:
        """``GET /api/runs/RUN/checks?offset=&limit=&q=&group=&failed=1``"""
        q = request.query_params
        try:
            params = _page_params(q)
        except ValueError as exc:
            return _error(400, str(exc))
        group, failed_only = q.get("group", ""), q.get("failed", "") in ("1", "true")

        def page(detail: RunDetail) -> bytes:
            found = checks_page(detail, group=group, failed_only=failed_only, **params)
            return msgspec.json.encode(found)

        body = await run_view_of(request, page)
        return body if isinstance(body, Response) else _json(body)

    async def report(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            check_name(run_id, "run id")
        except SisasError as exc:
            return HTMLResponse(f"<p>{escape(str(exc))}</p>", 400)
        try:
            verdicts = await verify_log(bus, run_id)
            manifest = (await ask(bus, "manifest", {"run_id": run_id}, timeout=10)).result
            records = await bus.log.read_run(run_id)
        except SisasError as exc:
            return HTMLResponse(f"<p>no report for {escape(run_id)}: {escape(str(exc))}</p>", 404)
        signals = [r.signal for r in records if isinstance(r, StoredSignal)]
        html = render_report(
            manifest=manifest,
            verdict=verdicts.verdicts[0],
            state=fold(signals),
            signals=signals,
            generated_with=f"sisas {__version__} dashboard",
        )
        return HTMLResponse(html)

    async def events(request: Request) -> Response:
        queue = hub.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield f"retry: 1000\nevent: hello\ndata: {hub.last_seq}\n\n".encode()
                if request.headers.get("last-event-id"):
                    yield b"event: resync\ndata: reconnected\n\n"  # what was missed: refetch
                while True:
                    try:
                        seq, data = await asyncio.wait_for(queue.get(), HEARTBEAT)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if not data:
                        return  # the dashboard is stopping
                    if data == RESYNC:
                        yield f"id: {seq}\nevent: resync\ndata: behind\n\n".encode()
                    else:
                        yield b"id: %d\nevent: signal\ndata: %s\n\n" % (seq, data)
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "clients": hub.clients, "last_seq": hub.last_seq})

    static = resources.files("sisas.dashboard").joinpath("static")
    return Starlette(
        routes=[
            Route("/", index),
            Route("/runs/{run_id}", run_page),
            Route("/runs/{run_id}/report", report),
            Route("/api/runs", api_runs),
            Route("/api/runs/{run_id}", api_run),
            Route("/api/runs/{run_id}/phases/{phase}/items", api_items),
            Route("/api/runs/{run_id}/checks", api_checks),
            Route("/events", events),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ]
    )


@contextlib.asynccontextmanager
async def feeding(bus: Bus, hub: Hub) -> AsyncIterator[asyncio.Task[None]]:
    """The hub fed from the log while inside the block."""
    task = asyncio.create_task(hub.run(bus.log), name="dashboard-hub")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await hub.close()
