"""Orchestration overhead per phase: a 7-phase no-op chain and a 100-wide fan-out.

    .venv/bin/python -m bench.overhead [--runs N] [--fanout-runs N] [--sync always|2m]

Embedded nats-server with ``sync_interval: always`` (every signal fsynced) unless
``--sync`` says otherwise, an orchestrator and a worker in this process
(bench/pipelines.py). Runs are timed one after the other, from publishing the start to
seeing ``run_completed``; wall time per run / phases = overhead per phase. The raw limit,
measured in the same run: one nats-py JetStream publish-and-ack round trip, sequential.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from nats.js.api import StreamConfig

from bench.pipelines import FANOUT_WIDTH, fanout, noop
from bench.runs import start, timed_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.services.host import running_services
from sisas.signals import StoredSignal


async def one_run(bus, run_id: str, digest: str) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    follow = bus.log.follow_run(run_id).__aiter__()
    await start(bus, "noop7", run_id, digest)
    n = 0
    async for rec in follow:
        n += 1
        if isinstance(rec, StoredSignal) and rec.signal.kind in ("run_completed", "run_failed"):
            assert rec.signal.kind == "run_completed", rec.signal
            break
    elapsed = time.perf_counter() - t0
    await follow.aclose()
    return elapsed, n


async def raw_round_trips(bus, n: int = 300) -> list[float]:  # type: ignore[no-untyped-def]
    """The raw limit: ``n`` sequential nats-py JetStream publish-and-ack round trips (s),
    400-byte payloads with a Nats-Msg-Id, to a file stream on the same server."""
    await bus.js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], storage="file"))  # type: ignore[arg-type]
    times = []
    for i in range(n):
        t = time.perf_counter()
        await bus.js.publish("raw.x", b"x" * 400, headers={"Nats-Msg-Id": f"m{i}"})
        times.append(time.perf_counter() - t)
    return times


async def measure(runs: int, fanout_runs: int, sync: str = "always") -> dict[str, float]:
    """The 7-phase chain and the fan-out, p50 wall time per run, and the raw limit.

    Runs are timed one after the other, each from publishing its start to seeing its
    ``run_completed`` (a core subscription, no consumer per run)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home", sync=sync) as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                raw = await raw_round_trips(bus)
                digest = await bus.artifacts.put(b"0")
                pipelines = {"noop7": noop, "fanout100": fanout}
                async with running_services(bus, pipelines, concurrency=2):
                    chain = await timed_runs(bus, "noop7", runs, digest, "chain")
                    fan = await timed_runs(bus, "fanout100", fanout_runs, digest, "fan")
                chain_signals = await bus.log.last_seq()
    raw_p50 = statistics.median(raw)
    chain_p50, fan_p50 = statistics.median(chain), statistics.median(fan)
    fan_phases = FANOUT_WIDTH + 2
    print(
        f"  sync {sync}: raw publish-and-ack {raw_p50 * 1e3:.3f} ms; 7-phase chain p50 "
        f"{chain_p50 * 1e3:.1f} ms over {runs} runs; {FANOUT_WIDTH}-wide fan-out p50 "
        f"{fan_p50 * 1e3:.0f} ms over {fanout_runs}",
        flush=True,
    )
    return {
        "sync": sync,  # type: ignore[dict-item]
        "raw_ack_ms": raw_p50 * 1e3,
        "chain_runs": runs,
        "chain_run_ms_p50": chain_p50 * 1e3,
        "chain_run_ms_p90": sorted(chain)[int(len(chain) * 0.9)] * 1e3,
        "chain_per_phase_ms": chain_p50 / 7 * 1e3,
        "fanout_runs": fanout_runs,
        "fanout_width": FANOUT_WIDTH,
        "fanout_run_ms_p50": fan_p50 * 1e3,
        "fanout_per_phase_ms": fan_p50 / fan_phases * 1e3,
        "log_signals": chain_signals,
    }


async def main(runs: int, fanout_runs: int, sync: str) -> None:
    r = await measure(runs, fanout_runs, sync)
    print(f"raw nats-py publish-and-ack, p50 of 300:        {r['raw_ack_ms']:7.3f} ms")
    print(
        f"7-phase no-op run, wall time, p50 of {runs}:      {r['chain_run_ms_p50']:7.2f} ms "
        f"(p90 {r['chain_run_ms_p90']:.2f} ms)"
    )
    print(f"overhead per phase (run / 7):                  {r['chain_per_phase_ms']:7.3f} ms")
    print(
        f"ratio per phase / raw publish-and-ack:         "
        f"{r['chain_per_phase_ms'] / r['raw_ack_ms']:7.1f}x"
    )
    print(
        f"{FANOUT_WIDTH}-wide fan-out run, p50 of {fanout_runs}:          "
        f"{r['fanout_run_ms_p50']:7.1f} ms, {r['fanout_per_phase_ms']:.3f} ms per phase "
        f"({r['fanout_per_phase_ms'] / r['raw_ack_ms']:.1f}x raw)"
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="7-phase no-op run overhead")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--fanout-runs", type=int, default=5)
    p.add_argument("--sync", default="always", help="server sync_interval (always, or e.g. 2m)")
    a = p.parse_args()
    asyncio.run(main(a.runs, a.fanout_runs, a.sync))
