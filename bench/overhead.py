"""Orchestration overhead per phase: a 7-phase no-op pipeline, end to end.

    .venv/bin/python bench/overhead.py [--runs N]

Embedded nats-server with ``sync_interval: always`` (every signal fsynced), an
orchestrator and a worker in this process. Each run is started, then followed until
``run_completed``; wall time per run / 7 = overhead per phase. The raw limit, measured in
the same run: one nats-py JetStream publish-and-ack round trip, sequential.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import StreamConfig

from sisas.bus.embedded import EmbeddedServer
from sisas.bus.inputs import publish_input
from sisas.bus.runtime import open_bus
from sisas.bus.services import running_services
from sisas.bus.settings import Settings
from sisas.pipeline import Context, Pipeline
from sisas.signals import StoredSignal
from sisas.signals.inputs import StartRun

noop = Pipeline("noop7", version="1")


@noop.phase()
def p0(ctx: Context, input: int) -> int:
    return 0


def _chain(i: int) -> None:
    def phase(ctx: Context, **kw: int) -> int:
        return i

    phase.__name__ = f"p{i}"
    noop.phases.pop(f"p{i}", None)
    noop.phase(name=f"p{i}", depends_on=[f"p{i - 1}"])(_with_param(phase, f"p{i - 1}"))


def _with_param(fn: object, dep: str) -> object:
    ns: dict[str, object] = {"Context": Context, "fn": fn}
    exec(f"def f(ctx: Context, {dep}: int) -> int:\n    return fn(ctx)\n", ns)
    return ns["f"]


for _i in range(1, 7):
    _chain(_i)


async def one_run(bus, run_id: str, digest: str) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    follow = bus.log.follow_run(run_id).__aiter__()
    await publish_input(
        bus.js,
        StartRun(
            id=f"start:{run_id}",
            pipeline="noop7",
            run_id=run_id,
            at=datetime.now(UTC),
            seed=1,
            input_digest=digest,
        ),
    )
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


async def main(runs: int, sync: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home", sync=sync) as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                raw_p50 = statistics.median(await raw_round_trips(bus))
                digest = await bus.artifacts.put(b"0")
                async with running_services(bus, {"noop7": noop}, concurrency=1):
                    await one_run(bus, "warmup", digest)
                    results = [await one_run(bus, f"run{i}", digest) for i in range(runs)]
    times = sorted(t for t, _ in results)
    p50 = statistics.median(times)
    signals = results[0][1]
    print(f"raw nats-py publish-and-ack, p50 of 300:        {raw_p50 * 1e3:7.3f} ms")
    print(
        f"7-phase no-op run, wall time, p50 of {runs}:      {p50 * 1e3:7.2f} ms "
        f"(p90 {times[int(len(times) * 0.9)] * 1e3:.2f} ms, {signals} signals/run)"
    )
    print(f"overhead per phase (run / 7):                  {p50 / 7 * 1e3:7.3f} ms")
    print(f"ratio per phase / raw publish-and-ack:         {p50 / 7 / raw_p50:7.1f}x")
    print(
        f"signals appended per run / raw round trips:    {p50 / signals / raw_p50:7.2f}x "
        "raw per signal"
    )
    print(
        json.dumps(
            {
                "sync": sync,
                "runs": runs,
                "raw_ack_ms": round(raw_p50 * 1e3, 3),
                "run_ms_p50": round(p50 * 1e3, 2),
                "per_phase_ms": round(p50 / 7 * 1e3, 3),
                "signals_per_run": signals,
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="7-phase no-op run overhead")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--sync", default="always", help="server sync_interval (always, or e.g. 2m)")
    a = p.parse_args()
    asyncio.run(main(a.runs, a.sync))
