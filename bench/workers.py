"""Runs per second with 1, 2 and 4 worker processes.

    .venv/bin/python -m bench.workers [--runs N] [--workers 1,2,4]

An embedded nats-server (``sync_interval: always``) and one orchestrator in this
process; ``sisas worker --pipelines bench/pipelines.py`` started as separate processes
(each with 2 slots), as a deployment runs them. ``N`` runs of the 7-phase no-op chain
are started at once; the rate is N over the time until the last one completed, after a
warm-up round that every worker takes part in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.runs import concurrent_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.services.host import running_services
from sisas.signals.names import WORK_STREAM

ROOT = Path(__file__).resolve().parent.parent
SISAS = Path(sys.executable).with_name("sisas")


def _spawn(url: str, home: Path, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SISAS_NATS_URL": url, "SISAS_HOME": str(home), "SISAS_REPLICAS": "1"}
    return subprocess.Popen(
        [str(SISAS), "worker", "--pipelines", str(ROOT / "bench" / "pipelines.py"), "--name", name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def _wait_ready(bus: object, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker process has a pull request waiting on the shared consumer."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                err = (p.stderr.read() if p.stderr else b"").decode(errors="replace")
                raise RuntimeError(f"a benchmark worker exited ({p.returncode}): {err[-500:]}")
        try:
            info = await bus.js.consumer_info(WORK_STREAM, "worker-noop7")  # type: ignore[attr-defined]
            if info.num_waiting >= len(procs):
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("benchmark workers did not start within 120 s")


async def measure(runs: int, counts: tuple[int, ...] = (1, 2, 4)) -> dict[str, float]:
    """Runs per second of the 7-phase chain for each number of worker processes."""
    out: dict[str, float] = {}
    for k in counts:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            async with EmbeddedServer(home, sync="always") as server:
                settings = Settings(home=home, nats_url=server.url, replicas=1)
                procs = [_spawn(server.url, Path(tmp) / f"w{i}", f"bench-w{i}") for i in range(k)]
                try:
                    async with open_bus(settings) as bus:
                        await _wait_ready(bus, procs)
                        digest = await bus.artifacts.put(b"0")
                        async with running_services(bus, {}, concurrency=1):
                            await concurrent_runs(bus, "noop7", 2 * k, digest, "warm")
                            seconds = await concurrent_runs(bus, "noop7", runs, digest, "m")
                finally:
                    for p in procs:
                        if p.poll() is None:
                            os.killpg(p.pid, signal.SIGTERM)
                    for p in procs:
                        try:
                            p.wait(15)
                        except subprocess.TimeoutExpired:
                            os.killpg(p.pid, signal.SIGKILL)
                            p.wait()
        out[f"runs_per_s_{k}"] = runs / seconds
        print(
            f"  {k} worker process(es): {runs} runs in {seconds:.2f} s, "
            f"{runs / seconds:.1f} runs/s",
            flush=True,
        )
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--workers", default="1,2,4")
    a = p.parse_args()
    counts = tuple(int(x) for x in a.workers.split(","))
    print(json.dumps(asyncio.run(measure(a.runs, counts))))
