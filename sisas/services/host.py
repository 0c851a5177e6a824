"""Running the handlers: the orchestrator (and the admission service of limited
pipelines), a worker and the projector with its query service, in this process, until
stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

from sisas.bus.limits import set_limit
from sisas.bus.runtime import Bus
from sisas.pipeline import Pipeline
from sisas.services.admission import AdmissionService
from sisas.services.orchestrator import Orchestrator
from sisas.services.query import QueryService, local_projector
from sisas.services.worker import Worker

__all__ = ["running_services", "stop_on_signals"]


@contextlib.asynccontextmanager
async def running_services(
    bus: Bus,
    pipelines: dict[str, Pipeline],
    *,
    orchestrator: bool = True,
    concurrency: int = 2,
    projector: bool = False,
    projector_batch: int = 5_000,
    reload: bool = False,
) -> AsyncIterator[asyncio.Event]:
    """Run an orchestrator, (if there are pipelines) a worker and (if asked) the
    projector with its query service while inside the block; ``reload``: the worker
    picks up changed pipeline files (:mod:`sisas.services.reloading`).

    Yields the event that stops them; leaving the block stops them cleanly.
    """
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    async with contextlib.AsyncExitStack() as stack:
        if projector:
            proj = await stack.enter_async_context(local_projector(bus, batch_size=projector_batch))
            await proj.open()
            service = QueryService(bus.nc, proj)
            await service.start()
            stack.push_async_callback(service.stop)
            tasks.append(asyncio.create_task(proj.run(stop), name="projector"))
        async with _handlers(bus, pipelines, stop, tasks, orchestrator, concurrency, reload):
            yield stop


@contextlib.asynccontextmanager
async def _handlers(
    bus: Bus,
    pipelines: dict[str, Pipeline],
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
    orchestrator: bool,
    concurrency: int,
    reload: bool = False,
) -> AsyncIterator[None]:
    orch = Orchestrator(bus) if orchestrator else None
    if pipelines:
        # A worker beside an orchestrator hands it its reports directly (the fast path).
        worker = Worker(bus, pipelines, concurrency=concurrency, local=orch, reload=reload)
        await worker.register()
        tasks.append(asyncio.create_task(worker.run(stop), name="worker"))
    if orch is not None:
        for pipe in pipelines.values():  # a limit declared in the code, as `limits set`
            if pipe.max_concurrent_runs is not None:
                await set_limit(bus, pipe.name, pipe.max_concurrent_runs)
        tasks.append(asyncio.create_task(orch.run(stop), name="orchestrator"))
        # Beside each orchestrator: requests of pipelines with a concurrency limit wait
        # for it (it idles until a limit is set).
        tasks.append(asyncio.create_task(AdmissionService(bus).run(stop), name="admission"))
    try:
        yield
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        # Until they have ended: the projector's writer thread must be done with the
        # DuckDB file before the block that opened it closes it.
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (also when a shell started us with SIGINT ignored)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
