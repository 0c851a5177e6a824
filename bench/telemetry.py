"""What tracing costs: the 7-phase no-op run with telemetry off, then on.

    .venv/bin/python -m bench.telemetry [--runs N]

Same setup as bench/overhead.py (embedded nats-server, every signal fsynced, an
orchestrator and a worker in this process). First ``--runs`` runs with no tracer
provider (the default), then the SDK installed as a deployment would have it (batch
span processor, periodic metric reader) exporting to in-memory sinks, and ``--runs``
more. The raw limit of the same run: one nats-py JetStream publish-and-ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.overhead import noop, one_run, raw_round_trips
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.services.host import running_services
from sisas.telemetry.setup import install


async def main(runs: int) -> None:
    spans = InMemorySpanExporter()
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home") as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                raw = await raw_round_trips(bus)
                digest = await bus.artifacts.put(b"0")
                async with running_services(bus, {"noop7": noop}, concurrency=1):
                    await one_run(bus, "warmup", digest)
                    off = [(await one_run(bus, f"off{i}", digest))[0] for i in range(runs)]
                    telemetry = install(
                        role="bench",
                        span_exporters=[spans],
                        metric_readers=[InMemoryMetricReader()],
                    )
                    await one_run(bus, "warmup-on", digest)
                    on = [(await one_run(bus, f"on{i}", digest))[0] for i in range(runs)]
                telemetry.shutdown()
    raw_p50, off_p50, on_p50 = (statistics.median(x) for x in (raw, off, on))
    print(f"raw nats-py publish-and-ack, p50 of 300:   {raw_p50 * 1e3:7.3f} ms")
    print(f"7-phase run, telemetry off, p50 of {runs}:   {off_p50 * 1e3:7.2f} ms")
    print(f"7-phase run, telemetry on,  p50 of {runs}:   {on_p50 * 1e3:7.2f} ms")
    print(f"ratio on / off:                           {on_p50 / off_p50:7.2f}x")
    print(f"spans exported: {len(spans.get_finished_spans())} ({runs + 1} runs)")
    print(
        json.dumps(
            {
                "runs": runs,
                "raw_ack_ms": round(raw_p50 * 1e3, 3),
                "off_ms_p50": round(off_p50 * 1e3, 2),
                "on_ms_p50": round(on_p50 * 1e3, 2),
                "ratio_on_off": round(on_p50 / off_p50, 3),
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="telemetry on vs off, 7-phase no-op run")
    p.add_argument("--runs", type=int, default=30)
    asyncio.run(main(p.parse_args().runs))
