"""Wiring: one call gives a connected, provisioned bus, embedded or not.

- ``SISAS_NATS_URL`` set: connect there; nothing is spawned.
- otherwise, a server already serving ``SISAS_HOME`` (``sisas up``): connect to it.
- otherwise: spawn the embedded server for the duration of the ``async with``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from sisas.bus.artifacts import JetStreamArtifacts
from sisas.bus.circuits import CircuitBoard
from sisas.bus.connection import connect
from sisas.bus.embedded import EmbeddedServer, running_server
from sisas.bus.inputs import JetStreamInputs
from sisas.bus.jetstream_log import JetStreamLog
from sisas.bus.ports import Ports
from sisas.bus.registry import PlanRegistry
from sisas.bus.settings import Settings
from sisas.bus.streams import ProvisionReport, provision
from sisas.bus.wire import NatsWire
from sisas.bus.work import WorkQueue
from sisas.errors import ServerAlreadyRunning

__all__ = ["Bus", "open_bus"]


@dataclass
class Bus(Ports):
    """The ports on a connected, provisioned server, and the raw connection (for what
    only NATS does: the CLI's status, provisioning, the query service)."""

    url: str
    nc: NATS
    js: JetStreamContext
    provisioned: ProvisionReport
    server: EmbeddedServer | None
    """The server this bus spawned, or None when it uses one that was already up."""

    @property
    def server_version(self) -> str:
        """The version of the nats-server connected to, as it announced itself."""
        info: dict[str, object] = getattr(self.nc, "_server_info", None) or {}
        return str(info.get("version", ""))


@contextlib.asynccontextmanager
async def open_bus(settings: Settings, *, name: str = "sisas") -> AsyncIterator[Bus]:
    """Connect (spawning the embedded server if needed), provision, and yield a :class:`Bus`.

    Raises :class:`sisas.errors.BusUnavailable`, :class:`sisas.errors.StreamDrift`,
    :class:`sisas.errors.StoreWithoutStream` or :class:`sisas.errors.EmbeddedServerError`
    with a message naming the fix. Everything is closed (and a spawned server stopped)
    on exit.
    """
    async with contextlib.AsyncExitStack() as stack:
        server: EmbeddedServer | None = None
        if settings.nats_url:
            url, identity = settings.nats_url, settings.nats_url
        else:
            identity = "embedded"
            running = running_server(settings.home)
            if running is not None:
                url = running.url
            else:
                server = EmbeddedServer(settings.home, port=settings.port, sync=settings.sync)
                try:
                    await stack.enter_async_context(server)
                    url = server.url
                except ServerAlreadyRunning as exc:  # lost a race with another sisas
                    server, url = None, exc.url
        nc = await connect(url, settings, name=name)
        stack.push_async_callback(_close, nc)
        js = nc.jetstream(timeout=settings.timeout)
        report = await provision(
            js,
            replicas=settings.replicas,
            home=settings.home,
            identity=identity,
            store=settings.home / "nats" if identity == "embedded" else None,
        )
        log = JetStreamLog(nc, timeout=settings.timeout)
        stack.push_async_callback(log.close)
        await log.start()
        work = WorkQueue(nc, timeout=settings.timeout)
        stack.push_async_callback(work.close)
        artifacts = JetStreamArtifacts(js, nc=nc, timeout=settings.timeout)
        stack.push_async_callback(artifacts.close)
        yield Bus(
            settings=settings,
            url=url,
            nc=nc,
            js=js,
            log=log,
            artifacts=artifacts,
            inputs=JetStreamInputs(js),
            work=work,
            plans=PlanRegistry(js, nc),
            circuits=CircuitBoard(js),
            wire=NatsWire(nc),
            provisioned=report,
            server=server,
        )


async def _close(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await nc.drain()
    with contextlib.suppress(Exception):
        await nc.close()
