"""The dashboard's actions: launch a run, cancel one, re-execute one from its failure,
re-run one with the same input; and the session API the pages sign in with.

Each action is sent through :class:`sisas.client.Client` on the signed-in operator's
session (:mod:`sisas.dashboard.sessions`), so the log records it as it records the same
command from the CLI: a ``start_run`` (its ``run_requested`` names the operator in
``requested_by``) or a ``cancel_run``. Routes::

    GET  /api/session                 {actions, signed_in, who, csrf}
    POST /api/session                 sign in: {name, token | seed | user, password}
    POST /api/session/end             sign out
    GET  /api/pipelines               registered pipelines and their input's JSON Schema
    POST /api/launch                  {pipeline, input, seed, config, tags} -> {run_id}
    POST /api/runs/RUN/cancel         -> {cancelled}
    POST /api/runs/RUN/resume         re-execute from failure -> {run_id}
    POST /api/runs/RUN/rerun          the same input, seed, config and tags -> {run_id}

Errors are ``{"error": message}``: 400 a bad request (an input the contract refuses, with
the schema's message), 401 wrong credentials, 403 not allowed, 404 no such run.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sisas.bus.runtime import Bus
from sisas.client.starting import check_settings
from sisas.dashboard.sessions import COOKIE, Refused, Session, Sessions
from sisas.errors import SisasError, UsageError
from sisas.signals import RunRequested, StoredSignal
from sisas.signals.names import check_name, check_tags
from sisas.signals.plan import PipelinePlan

__all__ = ["action_routes", "check_input"]

MAX_BODY: Final = 4 << 20
"""Bytes of a POST body at most (a run's input included)."""


def check_input(plan: PipelinePlan, value: Any) -> None:
    """Raise :class:`UsageError` when ``value`` does not match the JSON Schema of
    ``plan``'s input, naming where and what the schema says (the page checks the same
    before sending; this is the server's own check)."""
    if not plan.input_schema:
        return
    schema = json.loads(plan.input_schema)
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        where = "input" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        contract = plan.input_contract or "its input schema"
        raise UsageError(f"{where}: {error.message} (the contract {contract} of {plan.name})")


async def _body(request: Request) -> dict[str, Any]:
    data = await request.body()
    if len(data) > MAX_BODY:
        raise Refused(400, f"the request is over {MAX_BODY >> 20} MiB")
    if not data:
        return {}
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise Refused(400, f"the request body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


Action = Callable[[Request, Session, dict[str, Any]], Awaitable[dict[str, Any]]]


def action_routes(bus: Bus, sessions: Sessions) -> list[BaseRoute]:
    """The session and action routes over ``bus`` (the dashboard's own, reading) and
    ``sessions`` (who may act, and on which connection)."""

    def acting(action: Action) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                session = sessions.acting(request)
                answer = await action(request, session, await _body(request))
            except Refused as exc:
                return _error(exc.status, exc.message)
            except UsageError as exc:
                return _error(400, str(exc))
            except SisasError as exc:
                return _error(503, f"the bus cannot do it now: {exc}")
            return JSONResponse(answer)

        return endpoint

    async def session_info(request: Request) -> Response:
        session = sessions.of(request)
        return JSONResponse(
            {
                "actions": sessions.policy.mode,
                "signed_in": session is not None,
                "who": session.who if session else "",
                "csrf": session.csrf if session else "",
            },
            headers={"Cache-Control": "no-store"},
        )

    async def sign_in(request: Request) -> Response:
        try:
            session = await sessions.sign_in(request, await _body(request))
        except Refused as exc:
            return _error(exc.status, exc.message)
        response = JSONResponse({"signed_in": True, "who": session.who, "csrf": session.csrf})
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def sign_out(request: Request) -> Response:
        try:
            sessions.acting(request)
        except Refused as exc:
            return _error(exc.status, exc.message)
        await sessions.sign_out(request)
        response = JSONResponse({"signed_in": False})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def pipelines(request: Request) -> Response:
        try:
            names = sorted(await bus.plans.names())
            plans = [p for p in [await bus.plans.get(n) for n in names] if p is not None]
        except SisasError as exc:
            return _error(503, f"the registered pipelines cannot be read: {exc}")
        return JSONResponse(
            [
                {
                    "name": p.name,
                    "version": p.version,
                    "input_contract": p.input_contract,
                    "input_schema": json.loads(p.input_schema) if p.input_schema else None,
                    "phases": [ph.name for ph in p.phases],
                }
                for p in plans
            ]
        )

    async def plan_of(session: Session, pipeline: str) -> PipelinePlan:
        check_name(pipeline, "pipeline name")
        plan = await session.client.bus.plans.get(pipeline)
        if plan is None:
            known = ", ".join(sorted(await session.client.bus.plans.names())) or "none"
            raise UsageError(
                f"unknown pipeline {pipeline!r} (registered: {known}): start a worker with "
                "its code (`sisas up --pipelines CODE`)"
            )
        return plan

    async def launch(request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
        pipeline = body.get("pipeline")
        if not isinstance(pipeline, str) or not pipeline:
            raise UsageError("pipeline: give the name of a registered pipeline")
        seed, config, tags = body.get("seed"), body.get("config") or {}, body.get("tags") or {}
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise UsageError("seed must be a whole number from 0, or empty to draw one")
        if not isinstance(config, dict) or not all(
            isinstance(v, str | int | float | bool) for v in config.values()
        ):
            raise UsageError("config must be an object of strings, numbers and booleans")
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise UsageError("tags must be an object of strings (k=v)")
        plan = await plan_of(session, pipeline)
        value = body.get("input")
        check_input(plan, value)
        check_settings(dict(config), plan, how="config key ")
        started = await session.client.request(
            pipeline, value, seed=seed, config=config, tags=check_tags(tags), check_plan=False
        )
        return {"run_id": started.handle.run_id, "seed": started.seed}

    async def requested(session: Session, request: Request) -> tuple[str, RunRequested]:
        run_id = check_name(request.path_params["run_id"], "run id")
        rec = await session.client.bus.log.first_of_kind(run_id, "run_requested")
        if not isinstance(rec, StoredSignal) or not isinstance(rec.signal.body, RunRequested):
            raise Refused(404, f"no run {run_id} in the log")
        return rec.signal.pipeline, rec.signal.body

    async def cancel(request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
        run_id = check_name(request.path_params["run_id"], "run id")
        pipeline, _ = await requested(session, request)
        done = await session.client.cancel(
            run_id, f"cancelled from the dashboard by {session.who}", pipeline=pipeline
        )
        return {"cancelled": done}

    async def resume(request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
        run_id = check_name(request.path_params["run_id"], "run id")
        pipeline, _ = await requested(session, request)
        await plan_of(session, pipeline)
        started = await session.client.request(pipeline, resume_of=run_id, check_plan=False)
        return {
            "run_id": started.handle.run_id,
            "from_phase": started.resume.from_phase if started.resume else "",
        }

    async def rerun(request: Request, session: Session, body: dict[str, Any]) -> dict[str, Any]:
        pipeline, old = await requested(session, request)
        await plan_of(session, pipeline)
        data = await session.client.bus.artifacts.get(old.input_digest)
        started = await session.client.request(
            pipeline,
            input_bytes=data,
            seed=old.seed,
            config=dict(old.config),
            tags=dict(old.tags),
            check_plan=False,
        )
        return {"run_id": started.handle.run_id, "seed": started.seed}

    return [
        Route("/api/session", session_info, methods=["GET"]),
        Route("/api/session", sign_in, methods=["POST"]),
        Route("/api/session/end", sign_out, methods=["POST"]),
        Route("/api/pipelines", pipelines, methods=["GET"]),
        Route("/api/launch", acting(launch), methods=["POST"]),
        Route("/api/runs/{run_id}/cancel", acting(cancel), methods=["POST"]),
        Route("/api/runs/{run_id}/resume", acting(resume), methods=["POST"]),
        Route("/api/runs/{run_id}/rerun", acting(rerun), methods=["POST"]),
    ]
