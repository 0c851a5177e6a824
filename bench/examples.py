"""The policy evaluation example end to end (300 executors in 12 chunks), 1 vs 2 workers.

    .venv/bin/python -m bench.examples [--runs N]

On an embedded nats-server (sync always): an orchestrator and one worker process slot
(`concurrency=1`), then two (`concurrency=2`), each running N policy evaluation runs one
after another; wall time from the start command to run_completed, median. For reference,
the same run in process with no bus (`LocalRun`): the phases' own compute plus the pure
orchestration, the floor of what the bus adds to.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from examples.policy_evaluation import pipeline
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.inputs import publish_input
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.handlers.local import LocalRun
from sisas.services.host import running_services
from sisas.signals.inputs import StartRun
from sisas.signals.records import StoredSignal

PLAN = (
    Path(__file__).parent.parent / "examples" / "policy_evaluation" / "data" / "plan.json"
).read_bytes()


async def one_run(bus, run_id: str, digest: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    follow = bus.log.follow_run(run_id).__aiter__()
    start = StartRun(
        id=f"start:{run_id}",
        pipeline=pipeline.name,
        run_id=run_id,
        at=datetime.now(UTC),
        seed=7,
        input_digest=digest,
    )
    await publish_input(bus.js, start)
    async for rec in follow:
        if isinstance(rec, StoredSignal) and rec.signal.kind in ("run_completed", "run_failed"):
            assert rec.signal.kind == "run_completed", rec.signal
            break
    await follow.aclose()
    return time.perf_counter() - t0


async def main(runs: int) -> None:
    local = []
    for i in range(runs):
        t = time.perf_counter()
        run = LocalRun(pipeline, f"l{i}", at=datetime.now(UTC), clock=time.perf_counter)
        run.start(PLAN, seed=7)
        assert run.run().status == "completed"
        local.append(time.perf_counter() - t)
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home") as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                digest = await bus.artifacts.put(PLAN)
                for workers in (1, 2):
                    async with running_services(
                        bus, {pipeline.name: pipeline}, concurrency=workers
                    ):
                        await one_run(bus, f"warm{workers}", digest)
                        times = [await one_run(bus, f"w{workers}-{i}", digest) for i in range(runs)]
                    results[workers] = statistics.median(times)
    print(f"policy evaluation (300 executors, 12 chunks), median of {runs} runs")
    print(f"  in process, no bus (LocalRun):   {statistics.median(local) * 1e3:8.1f} ms")
    for workers, t in results.items():
        slots = f"{workers} worker slot{'s' if workers > 1 else ' '}"
        print(f"  on the bus, {slots}:      {t * 1e3:8.1f} ms")
    print(f"  2 slots / 1 slot:                {results[2] / results[1]:8.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="policy evaluation end to end, 1 vs 2 workers")
    p.add_argument("--runs", type=int, default=10)
    asyncio.run(main(p.parse_args().runs))
