"""Serving the dashboard with uvicorn inside the running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn

from sisas.bus.runtime import Bus
from sisas.dashboard.app import create_app, feeding
from sisas.dashboard.hub import Hub
from sisas.dashboard.sessions import ActionPolicy
from sisas.errors import UsageError

__all__ = ["DEFAULT_PORT", "serving_dashboard"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


PORT_FIX = "pass --port N (0: any free port)"
"""How ``sisas dashboard`` is given another port; ``sisas up`` passes its own options."""


def _bind(host: str, port: int, fix: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"the dashboard cannot listen on {host}:{port} ({exc.strerror}): another "
            f"program uses it; {fix}"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serving_dashboard(
    bus: Bus,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    port_fix: str = PORT_FIX,
    policy: ActionPolicy | None = None,
) -> AsyncIterator[str]:
    """Serve the dashboard while inside the block; yields its URL. ``policy``: whether
    it acts (:mod:`sisas.dashboard.sessions`; default: read only). Raises UsageError
    when ``host:port`` cannot be bound, ending with ``port_fix`` (how to pick another)."""
    sock = _bind(host, port, port_fix)
    hub = Hub()
    app = create_app(bus, hub, policy)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    async with feeding(bus, hub):
        task = asyncio.create_task(server.serve(sockets=[sock]), name="dashboard")
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises what stopped it
        bound = sock.getsockname()[1]
        try:
            yield f"http://{host}:{bound}"
        finally:
            server.should_exit = True
            await hub.close()  # ends every open event stream, so shutdown is not held up
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            await app.state.sessions.close()  # the operators' connections
            sock.close()
