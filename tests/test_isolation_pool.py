"""Isolated phases (``timeout=``, ``memory_limit=``) run in a worker's warm children: one
child serves attempt after attempt, one past its timeout or cancelled is killed and
replaced, one that dies fails its attempt only, a reload retires children of old code,
and a stopping worker ends its children."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus
from sisas.client import Client
from sisas.errors import RunCancelledError
from sisas.handlers.execute import PhaseInputs
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.services.isolation_pool import IsolationPool
from sisas.services.orchestrator import Orchestrator
from sisas.services.worker import Worker

CODE = str(Path(__file__).parent / "pool_pipelines.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout}s")


@contextlib.asynccontextmanager
async def serving(
    bus: Bus, pipes: dict[str, Pipeline], *, reload: bool = False
) -> AsyncIterator[Worker]:
    """An orchestrator and a worker with one slot (so one warm child) until the block
    ends; yields the worker, whose pool the test inspects."""
    orch = Orchestrator(bus)
    worker = Worker(bus, pipes, concurrency=1, local=orch, reload=reload, ack_wait=5)
    await worker.register()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(orch.run(stop))]
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_one_warm_child_serves_every_attempt_and_ends_with_the_worker(bus: Bus) -> None:
    client = Client(bus)
    async with serving(bus, load_pipelines([CODE], entry_points=False)) as worker:
        pids = []
        for _ in range(2):
            handle = await client.start("warm", {"do": ""})
            await handle.result(timeout=60)
            pids += [await handle.output("first"), await handle.output("second")]
        pool = worker.isolation
        assert pool.pids == [pids[0]]
        assert pool.spawned == 1 and pool.reused == 3
    assert len(set(pids)) == 1 and pids[0] != os.getpid()  # 4 attempts, one child
    assert not alive(pids[0]) and pool.killed == 0  # ended cleanly: stdin closed
    assert pool.pids == []


async def test_a_child_past_its_timeout_is_killed_and_replaced(bus: Bus, tmp_path: Path) -> None:
    client = Client(bus)
    marker = tmp_path / "hung-pid"
    async with serving(bus, load_pipelines([CODE], entry_points=False)) as worker:
        handle = await client.start("warm", {"do": "hang", "marker": str(marker)})
        result = await handle.result(timeout=60, check=False)
        assert result.status == "failed" and result.failed_phase == "second"
        assert result.error is not None and result.error.kind == "Timeout"
        assert "timeout of 0.5s" in result.error.message
        kinds = [s.kind async for s in handle.signals(follow=False)]
        assert kinds.count("phase_timed_out") == 1
        hung = int(marker.read_text())
        assert hung == await handle.output("first")  # it hung in the warm child
        await until(lambda: not alive(hung), "the hung child being killed")

        again = await client.start("warm", {"do": ""})
        await again.result(timeout=60)
        fresh = await again.output("second")
        assert fresh != hung and alive(fresh)
        assert worker.isolation.pids == [fresh]
        assert worker.isolation.spawned == 2 and worker.isolation.killed == 1


async def test_a_child_that_dies_fails_its_attempt_and_the_next_one_runs(bus: Bus) -> None:
    client = Client(bus)
    async with serving(bus, load_pipelines([CODE], entry_points=False)) as worker:
        ok = await client.start("warm", {"do": ""})
        await ok.result(timeout=60)
        before = await ok.output("first")

        crashed = await client.start("warm", {"do": "crash"})
        result = await crashed.result(timeout=60, check=False)
        assert result.status == "failed" and result.failed_phase == "first"
        assert result.error is not None and result.error.kind == "HardFailure"
        assert "exited with code 3 without a result" in result.error.message
        assert not alive(before)

        after = await client.start("warm", {"do": ""})
        await after.result(timeout=60)
        assert await after.output("first") not in (before, None)
        assert worker.isolation.spawned == 2


async def test_cancel_kills_the_warm_child_running_the_phase(bus: Bus, tmp_path: Path) -> None:
    client = Client(bus)
    marker = tmp_path / "nap-pid"
    async with serving(bus, load_pipelines([CODE], entry_points=False)) as worker:
        handle = await client.start("warm_sleeper", {"marker": str(marker)})
        await until(marker.exists, "the nap phase starting")
        napping = int(marker.read_text())
        assert napping == await handle.output("pid")  # the child that ran `pid` before
        assert await handle.cancel("enough") is True
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=30)
        await until(lambda: not alive(napping), "the warm child being killed")
        assert worker.cancelled_attempts == 1

        after = await client.start("warm", {"do": ""})
        await after.result(timeout=60)
        assert await after.output("first") != napping


ORDERS = """\
import os

from sisas.pipeline import Context, Pipeline

reloaded = Pipeline("reloaded", version="1")


@reloaded.phase(timeout=30)
def which(ctx: Context, input: int) -> str:
    return "{version}:" + str(os.getpid())
"""


def write(path: Path, version: str) -> None:
    path.write_text(ORDERS.format(version=version))
    later = time.time() + 2  # a new mtime even within the file system's granularity
    os.utime(path, (later, later))


async def test_a_reload_retires_the_children_of_the_old_code(bus: Bus, tmp_path: Path) -> None:
    served = tmp_path / "reloaded.py"
    write(served, "v1")
    client = Client(bus)
    pipes = load_pipelines([str(served)], entry_points=False)
    old = pipes["reloaded"].plan().fingerprint
    async with serving(bus, pipes, reload=True) as worker:
        first = await client.start("reloaded", 1)
        await first.result(timeout=60)
        version, pid = (await first.output("which")).split(":")
        assert version == "v1" and worker.isolation.pids == [int(pid)]

        write(served, "v2")
        await until(lambda: worker.pipelines["reloaded"].plan().fingerprint != old, "a reload")
        await until(lambda: not alive(int(pid)), "the old child ending")
        second = await client.start("reloaded", 1)
        await second.result(timeout=60)
        version, fresh = (await second.output("which")).split(":")
        assert version == "v2" and int(fresh) != int(pid)
        assert worker.isolation.pids == [int(fresh)]


async def test_a_child_that_kept_memory_is_not_reused() -> None:
    """A child whose memory grew past GROWTH_LIMIT is retired after its attempt, so the
    next attempt's memory limit counts from a fresh child's size."""
    pipe = load_pipelines([CODE], entry_points=False)["warm"]

    async def first(do: str) -> int:
        outcome, timed_out = await pool.run(
            pipe,
            "first",
            PhaseInputs(values={"input": json.dumps({"do": do}).encode()}),
            timeout=30,
            memory_limit=None,
            kwargs={"run_id": "r", "seed": 1},
        )
        assert outcome.status == "completed" and not timed_out, outcome.error
        return int(json.loads(outcome.output))

    async with IsolationPool(1) as pool:
        plain = await first("")
        assert await first("") == plain
        hoarder = await first("hoard")
        assert hoarder == plain  # ran in the warm child, then it was retired
        fresh = await first("")
        assert fresh != plain
        await until(lambda: not alive(plain), "the hoarding child ending")
