"""The dashboard's web app: pages, a read-only JSON API and the live event stream.

Every route here is a GET: reading runs. Starting, cancelling and re-executing runs are
the POSTs of :mod:`sisas.dashboard.actions`, for a signed-in operator only, and off
unless the dashboard was started with them allowed (:mod:`sisas.dashboard.sessions`).
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
from sisas.client.backfills import backfill_ids, read_backfill
from sisas.client.queries import ask
from sisas.client.verification import verify_log
from sisas.dashboard.actions import action_routes
from sisas.dashboard.detail import RunDetail
from sisas.dashboard.hub import RESYNC, Hub
from sisas.dashboard.live_runs import RunDetails
from sisas.dashboard.sessions import ActionPolicy, Sessions
from sisas.dashboard.views import (
    ITEM_ORDERS,
    MAX_PAGE,
    attempt_log,
    checks_page,
    items_page,
    run_view,
)
from sisas.errors import SisasError
from sisas.handlers.state import fold
from sisas.handlers.tables import PhaseStatus
from sisas.signals import StoredSignal
from sisas.signals.names import check_name, parse_tag

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_STATUSES = {"requested", "running", "completed", "failed", "cancelled"}
HEARTBEAT = 15.0
COALESCE = 0.25
"""Seconds a run page's event stream waits after a ``changed`` event, gathering the
signals that come meanwhile into the next one."""
MAX_LIMIT = 1000


def _page(name: str) -> HTMLResponse:
    text = resources.files("sisas.dashboard").joinpath("static", name).read_text()
    return HTMLResponse(text, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _runs_params(q: QueryParams) -> dict[str, Any]:
    """The ``runs`` query of ``GET /api/runs?pipeline=&status=&tag=k=v&limit=``; raises
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
    tags: dict[str, str] = {}
    for text in q.getlist("tag"):
        if "=" not in text:
            raise ValueError(f"a tag is KEY=VALUE (team=data), not {text!r}")
        try:
            key, value = parse_tag(text)
        except SisasError as exc:
            raise ValueError(str(exc)) from None
        tags[key] = value
    if tags:
        params["tags"] = tags
    return params


T = TypeVar("T")
_ITEM_STATUSES = set(PhaseStatus.__args__)  # type: ignore[attr-defined]
MAX_QUERY = 200
MAX_LOG = 1 << 20
"""Bytes of an attempt's log a page is sent at most (a log keeps 1,000 lines of 2,000
characters at most: it fits)."""


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


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


def _run_json(detail: RunDetail) -> bytes:
    """The run page's JSON, built once per change of the run."""
    at = (detail.signals, detail.stored, detail.corrupt)
    if detail.summary is not None and detail.summary[0] == at:
        return detail.summary[1]
    view = run_view(detail=detail)
    view["corrupt"] = detail.corrupt
    view["refresh"] = detail.refresh = refresh_of(view)
    body = msgspec.json.encode(view)
    detail.summary = (at, body)
    return body


def refresh_of(view: dict[str, Any]) -> float:
    """Seconds between two reloads of a run page at most: 4 a second for a small run,
    fewer as it grows, by what it has (every 2 s from 40,000 signals) or will have
    (every 2 s from a fan-out of 2,500 items on, from its first item): each reload
    rebuilds a summary that costs O(items), and no one reads a 5,000-item run's page at
    4 Hz."""
    items = max((p["items"] or 0 for p in view["phases"]), default=0)
    return float(min(2.0, max(0.25, view["signals"] / 20_000, items / 1_250)))


def create_app(bus: Bus, hub: Hub, policy: ActionPolicy | None = None) -> Starlette:
    """The app over ``bus`` (queries and the log) and ``hub`` (the live stream);
    ``policy``: whether it acts, and how an operator signs in (default: it does not).
    Its ``state.sessions`` are closed by whoever serves it."""
    sessions = Sessions(bus, policy or ActionPolicy())

    async def index(request: Request) -> Response:
        return _page("index.html")

    async def run_page(request: Request) -> Response:
        return _page("run.html")

    async def backfills_page(request: Request) -> Response:
        return _page("backfills.html")

    async def api_backfills(request: Request) -> Response:
        """Every backfill in the log, by pipeline, with each partition's status (the
        partition grid); ``?pipeline=P``: one pipeline's."""
        wanted = request.query_params.get("pipeline", "")
        try:
            rows = [await read_backfill(bus, bid) for bid in await backfill_ids(bus)]
        except SisasError as exc:
            return _error(503, f"the log cannot be read: {exc}")
        rows.sort(key=lambda r: r["last_decision_at"] or "", reverse=True)  # the latest first
        by_pipeline: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if not wanted or row["pipeline"] == wanted:
                by_pipeline.setdefault(row["pipeline"], []).append(row)
        return JSONResponse(
            {
                "pipelines": [
                    {"pipeline": p, "backfills": by_pipeline[p]} for p in sorted(by_pipeline)
                ]
            }
        )

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

    details = RunDetails()
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

    async def api_log(request: Request) -> Response:
        """``GET /api/runs/RUN/log?phase=&item=&attempt=``: one attempt's log (what
        ``ctx.log`` said, what it printed, its traceback), read from the store by the
        digest its outcome signal names, and checked against it."""
        q = request.query_params
        phase = q.get("phase", "")
        try:
            check_name(phase, "phase name")
            item = int(q["item"]) if q.get("item", "") != "" else None
            attempt = int(q.get("attempt", "0"))
            if attempt < 0 or (item is not None and item < 0):
                raise ValueError
        except (SisasError, ValueError):
            return _error(400, "phase must be a phase name, item and attempt whole numbers")

        def find(detail: RunDetail) -> tuple[str, int] | Response:
            bar = attempt_log(detail, phase, item, attempt)
            if bar is None:
                where = f"{phase}{'' if item is None else f'[{item}]'} attempt {attempt}"
                return _error(404, f"no log of {where} in run {detail.state.run_id}")
            return bar.log, bar.log_lines

        found = await run_view_of(request, find)
        if isinstance(found, Response):
            return found
        try:
            data = await bus.artifacts.get(found[0])
        except SisasError as exc:
            return _error(503, f"the log cannot be read from the store: {exc}")
        text = data[:MAX_LOG].decode(errors="replace")
        cut = len(data) > MAX_LOG
        body = {"lines": found[1], "text": text, "cut": cut}
        return _json(msgspec.json.encode(body))

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
        """``GET /events``: every signal as an event; ``/events?run=RUN``: that run's
        changes, at most one ``changed`` event per :data:`COALESCE` seconds, or per
        the run's ``refresh`` if longer (the page then fetches its bounded summary), so
        a page's cost does not grow with the rate of the run's signals."""
        run = request.query_params.get("run") or None
        if run is not None:
            try:
                check_name(run, "run id")
            except SisasError as exc:
                return _error(400, str(exc))
        if request.query_params.get("runs"):
            return StreamingResponse(
                _runs_stream(hub, bool(request.headers.get("last-event-id"))),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        queue = hub.subscribe(run)

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
                    if run is not None and data and data != RESYNC:
                        changes = 1
                        while not queue.empty():  # all that came since: one event
                            seq, data = queue.get_nowait()
                            changes += 1
                            if not data or data == RESYNC:
                                break
                        else:
                            yield b"id: %d\nevent: changed\ndata: %d\n\n" % (seq, changes)
                            # no sooner than its page would reload: a big run's
                            # page hears of changes every 2 s, a small one's 4 a second
                            await asyncio.sleep(max(COALESCE, details.refresh(run)))
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
        return JSONResponse(
            {
                "ok": True,
                "clients": hub.clients,
                "last_seq": hub.last_seq,
                "indexes_built": details.built,
                "indexes_continued": details.continued,
            }
        )

    static = resources.files("sisas.dashboard").joinpath("static")
    app = Starlette(
        routes=[
            *action_routes(bus, sessions),
            Route("/", index),
            Route("/runs/{run_id}", run_page),
            Route("/runs/{run_id}/report", report),
            Route("/backfills", backfills_page),
            Route("/api/backfills", api_backfills),
            Route("/api/runs", api_runs),
            Route("/api/runs/{run_id}", api_run),
            Route("/api/runs/{run_id}/phases/{phase}/items", api_items),
            Route("/api/runs/{run_id}/checks", api_checks),
            Route("/api/runs/{run_id}/log", api_log),
            Route("/events", events),
            Route("/healthz", health),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ]
    )
    app.state.sessions = sessions
    return app


class _Seen(msgspec.Struct):
    """What the runs list needs of a signal's event."""

    run_id: str
    seq: int
    kind: str


_SEEN = msgspec.json.Decoder(_Seen)
_STARTS_OR_ENDS = frozenset(
    {"run_requested", "run_started", "run_completed", "run_failed", "run_cancelled"}
)


async def _runs_stream(hub: Hub, reconnected: bool) -> AsyncIterator[bytes]:
    """``GET /events?runs=1``, for the runs list: at most one ``runs`` event every
    :data:`COALESCE` seconds, ``{RUN: [signals so far, started or ended since]}`` for
    each run that had signals meanwhile, however many runs and signals there are."""
    queue = hub.subscribe()
    try:
        yield f"retry: 1000\nevent: hello\ndata: {hub.last_seq}\n\n".encode()
        if reconnected:
            yield b"event: resync\ndata: reconnected\n\n"
        while True:
            try:
                seq, data = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            runs: dict[str, list[int | bool]] = {}
            while data and data != RESYNC:
                seen = _SEEN.decode(data)
                counts = runs.setdefault(seen.run_id, [0, False])
                counts[0] = max(int(counts[0]), seen.seq)
                counts[1] = bool(counts[1]) or seen.kind in _STARTS_OR_ENDS
                if queue.empty():
                    break
                seq, data = queue.get_nowait()
            if runs:
                yield b"id: %d\nevent: runs\ndata: %s\n\n" % (seq, msgspec.json.encode(runs))
            if not data:
                return  # the dashboard is stopping
            if data == RESYNC:
                yield f"id: {seq}\nevent: resync\ndata: behind\n\n".encode()
            await asyncio.sleep(COALESCE)
    finally:
        hub.unsubscribe(queue)


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
