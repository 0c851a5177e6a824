"""Per-run cost as the log grows: 10 to 10,000 runs in the log.

    .venv/bin/python -m bench.scale [--levels 10,100,1000,10000] [--runs N]

An embedded nats-server (``sync_interval: always``), an orchestrator and a worker in
this process. At each level the log is first filled with finished synthetic runs of
another pipeline (bench/synthetic.py, ~29 signals each, published pipelined) until it
holds that many runs, then N runs of the 7-phase chain are timed one after the other.
Flat means nothing on a run's path reads the whole log: the per-run wall time at 10,000
runs should match the one at 10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from bench.pipelines import noop
from bench.runs import timed_runs
from bench.synthetic import publish_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.services.host import running_services


async def measure(levels: tuple[int, ...], runs: int) -> list[dict[str, float]]:
    """One row per level: runs and signals in the log, p50 and p90 ms of a chain run."""
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        async with EmbeddedServer(home, sync="always") as server:
            settings = Settings(home=home, nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                digest = await bus.artifacts.put(b"0")
                in_log, synthetic = 0, 0
                async with running_services(bus, {"noop7": noop}, concurrency=2):
                    for level in levels:
                        more = max(0, level - in_log - runs - 1)
                        await publish_runs(bus.js, more, start=synthetic)
                        synthetic += more
                        times = await timed_runs(bus, "noop7", runs, digest, f"l{level}")
                        in_log += more + runs + 1
                        ms = sorted(t * 1e3 for t in times)
                        row = {
                            "runs_in_log": in_log,
                            "signals_in_log": await bus.log.last_seq(),
                            "run_ms_p50": statistics.median(ms),
                            "run_ms_p90": ms[int(len(ms) * 0.9)],
                        }
                        rows.append(row)
                        print(
                            f"  {row['runs_in_log']:>6,} runs ({row['signals_in_log']:>8,} "
                            f"signals) in the log: run p50 {row['run_ms_p50']:.1f} ms, "
                            f"p90 {row['run_ms_p90']:.1f} ms",
                            flush=True,
                        )
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default="10,100,1000,10000")
    p.add_argument("--runs", type=int, default=8)
    a = p.parse_args()
    levels = tuple(int(x) for x in a.levels.split(","))
    print(json.dumps(asyncio.run(measure(levels, a.runs))))
