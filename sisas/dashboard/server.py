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
from sisas.errors import UsageError

__all__ = ["DEFAULT_PORT", "serving_dashboard"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"the dashboard cannot listen on {host}:{port} ({exc.strerror}): another "
            "program uses it; pass --dashboard-port N (0: any free port) or --no-dashboard"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serving_dashboard(
    bus: Bus, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> AsyncIterator[str]:
    """Serve the dashboard while inside the block; yields its URL."""
    sock = _bind(host, port)
    hub = Hub()
    app = create_app(bus, hub)
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
            sock.close()
