"""Presence: who answers that it runs a pipeline's phases, or decides inputs, right now."""

from __future__ import annotations

import asyncio
import time

from sisas.bus.presence import orchestrator_live, worker_live
from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from tests.runs import EXAMPLE


async def test_only_a_running_worker_or_orchestrator_counts_as_live(bus: Bus) -> None:
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    assert not await worker_live(bus.wire, "clustering")
    assert not await orchestrator_live(bus.wire)
    async with running_services(bus, pipes):
        deadline = time.monotonic() + 30
        while not await worker_live(bus.wire, "clustering"):  # once its task runs
            assert time.monotonic() < deadline, "the worker never answered"
            await asyncio.sleep(0.05)
        assert await orchestrator_live(bus.wire)
        assert not await worker_live(bus.wire, "taxonomy")
    # its plan stays registered, but a plan is not a worker
    assert await PlanRegistry(bus.js).get("clustering") is not None
    assert not await worker_live(bus.wire, "clustering")
    assert not await orchestrator_live(bus.wire)
