"""An orchestrator and a worker in one process, the worker handing its reports straight
to the orchestrator and the orchestrator handing it the work it commits (the fast paths
of ``sisas up --pipelines``), with short ack waits so that work and inputs a killed
process held come back within a second or two:

    python -m tests.faults.beside PIPELINES_FILE     (SISAS_* from the environment)
"""

from __future__ import annotations

import asyncio
import sys

from sisas.bus.runtime import open_bus
from sisas.cli.app import load_settings
from sisas.loader import load_pipelines
from sisas.services.host import stop_on_signals
from sisas.services.orchestrator import Orchestrator
from sisas.services.worker import Worker


async def main(spec: str) -> None:
    async with open_bus(load_settings(), name="sisas-beside") as bus:
        stop = asyncio.Event()
        stop_on_signals(stop)
        orchestrator = Orchestrator(bus, ack_wait=2.0)
        worker = Worker(bus, load_pipelines([spec]), ack_wait=1.0, local=orchestrator)
        await worker.register()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(orchestrator.run(stop))
            tg.create_task(worker.run(stop))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
