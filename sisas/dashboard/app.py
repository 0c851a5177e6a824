"""The dashboard's web app: pages, a read-only JSON API and the live event stream.

Every route is a GET: the dashboard can read runs, never start, cancel or change one
(it holds no publish path to the command subjects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from html import escape
from importlib import resources
from typing import Any

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
from sisas.dashboard.views import (
    ITEM_ORDERS,
    MAX_PAGE,
    checks_page,
    items_page,
    run_view,
    screened_detail,
)
from sisas.errors import SisasError
from sisas.handlers.state import fold
from sisas.handlers.tables import PhaseStatus
from sisas.signals import StoredSignal
from sisas.signals.names import check_name

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


class _Details:
    """The detail of the runs lately asked for, each kept until its run has a new signal
    (asked of the log: its last stream seq), so the pages of one run, and the pages of
    all the browsers showing it, read and fold it once per change."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._kept: dict[str, tuple[int, RunDetail]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, bus: Bus, run_id: str) -> RunDetail | None:
        """The run's detail, None when the log holds no run ``run_id``. Raises
        SisasError when the log cannot be read."""
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:  # one build per change, however many ask at once
            last = await bus.log.last_of_run(run_id)
            if last is None:
                return None
            kept = self._kept.get(run_id)
            if kept is not None and kept[0] == last.stream_seq:
                return kept[1]
            records = await bus.log.read_run(run_id)
            if not any(isinstance(r, StoredSignal) for r in records):
                return None
            # Off the event loop: on a big run the fold takes a while, and the loop may
            # be the one that orchestrates (`sisas up`).
            detail = await asyncio.to_thread(screened_detail, records)
            self._kept.pop(run_id, None)
            self._kept[run_id] = (records[-1].stream_seq, detail)
            while len(self._kept) > self.size:
                old = next(iter(self._kept))
                del self._kept[old]
                self._locks.pop(old, None)
            return detail


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

    async def detail_of(request: Request) -> RunDetail | Response:
        run_id = request.path_params["run_id"]
        try:
            check_name(run_id, "run id")
        except SisasError as exc:
            return _error(400, str(exc))
        try:
            detail = await details.get(bus, run_id)
        except SisasError as exc:
            return _error(503, f"the log cannot be read: {exc}")
        return _error(404, f"no run {run_id}") if detail is None else detail

    async def api_run(request: Request) -> Response:
        detail = await detail_of(request)
        if isinstance(detail, Response):
            return detail
        body = await asyncio.to_thread(_run_json, detail)
        return Response(body, media_type="application/json")

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
        detail = await detail_of(request)
        if isinstance(detail, Response):
            return detail
        phase = request.path_params["phase"]
        page = await asyncio.to_thread(
            items_page,
            detail,
            phase,
            status=q.get("status", ""),
            order=q.get("order") or "problems",
            **params,
        )
        if page is None:
            return _error(404, f"no fanned-out phase {phase!r} in run {detail.state.run_id}")
        return Response(msgspec.json.encode(page), media_type="application/json")

    async def api_checks(request: Request) -> Response:
        """``GET /api/runs/RUN/checks?offset=&limit=&q=&group=&failed=1``"""
        q = request.query_params
        try:
            params = _page_params(q)
        except ValueError as exc:
            return _error(400, str(exc))
        detail = await detail_of(request)
        if isinstance(detail, Response):
            return detail
        page = await asyncio.to_thread(
            checks_page,
            detail,
            group=q.get("group", ""),
            failed_only=q.get("failed", "") in ("1", "true"),
            **params,
        )
        return Response(msgspec.json.encode(page), media_type="application/json")

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
