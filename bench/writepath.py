"""The write path: what a run, a fan-out item and a batch cost in fsynced writes and time.

    .venv/bin/python -m bench.writepath [--runs N] [--concurrent N] [--items N ...]

Embedded nats-server with ``sync_interval: always`` (every message fsynced before its
ack), an orchestrator and a worker in this process (``--slots`` phases at once).
Measured in the same run:

- the raw limit: one nats-py JetStream publish-and-ack round trip (sequential, p50) and
  the pipelined rate (acks awaited in windows of 256) to a file stream on the server;
- the I/O skeleton of a 7-phase chain (:func:`skeleton`): 9 fsynced publish-and-acks in
  sequence with 7 hops to a phase thread and back, nothing decided: the floor of a run;
- a 7-phase no-op run, one after the other: p50 wall time, and the messages it costs
  (the log's commits, the work offered, the inputs, the outputs stored: every one of
  them fsynced);
- ``--concurrent`` such runs at once: runs/s, and runs/s x messages per run against the
  pipelined raw rate;
- a fan-out over ``--items`` items, end to end: seconds, per-item cost, and per-item cost
  against one raw publish-and-ack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.js.api import StreamConfig

from bench.pipelines import noop, wide
from bench.runs import concurrent_runs, timed_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.services.host import running_services
from sisas.services.phase_threads import PhaseThreads
from sisas.signals.names import ARTIFACT_BUCKET, BLOB_BUCKET, INPUT_STREAM, LOG_STREAM, WORK_STREAM

STREAMS = (LOG_STREAM, WORK_STREAM, INPUT_STREAM, f"KV_{BLOB_BUCKET}", f"OBJ_{ARTIFACT_BUCKET}")


async def raw_limit(bus: Any, n: int = 300, pipelined: int = 3000) -> tuple[float, float]:
    """p50 seconds of one sequential publish-and-ack, and pipelined messages per second."""
    await bus.js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], storage="file"))
    times = []
    for i in range(n):
        t = time.perf_counter()
        await bus.js.publish("raw.x", b"x" * 400, headers={"Nats-Msg-Id": f"m{i}"})
        times.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    for w in range(0, pipelined, 256):
        acks = [
            bus.js.publish("raw.y", b"y" * 400, headers={"Nats-Msg-Id": f"p{i}"})
            for i in range(w, min(w + 256, pipelined))
        ]
        await asyncio.gather(*acks)
    return statistics.median(times), pipelined / (time.perf_counter() - t0)


async def skeleton(bus: Any, runs: int = 100) -> float:
    """p50 seconds of the I/O skeleton of a 7-phase chain, in this process: 9 fsynced
    publish-and-acks one after the other (a run's start input and its 8 commits, each
    of a commit's size) with 7 hops to a kept phase thread and back between them, as
    the worker's (:class:`PhaseThreads`) hands a phase over. Nothing is decided,
    encoded or checked: what no design of a chain of thread-run phases in one Python
    process, each durable before the next, can go below on this machine."""
    await bus.js.add_stream(StreamConfig(name="SKELETON", subjects=["skeleton.>"], storage="file"))
    loop = asyncio.get_running_loop()
    threads = PhaseThreads(name="bench-skeleton")
    data = b"c" * 1500
    n = 0

    async def publish() -> None:
        nonlocal n
        n += 1
        await bus.js.publish("skeleton.x", data, headers={"Nats-Msg-Id": f"s{n}"})

    async def hop() -> None:
        done = loop.create_future()
        threads.submit(lambda: loop.call_soon_threadsafe(done.set_result, None))
        await done

    times = []
    for _ in range(runs + 300 // 9):  # the first 300 messages warm the stream up
        t = time.perf_counter()
        await publish()
        await publish()
        for _ in range(7):
            await hop()
            await publish()
        times.append(time.perf_counter() - t)
    return statistics.median(times[-runs:])


async def stored(bus: Any) -> int:
    """Messages ever stored in the log, the work queue, the inputs and the artifact
    stores (last sequences: the work queue deletes what was taken)."""
    return sum([int((await bus.js.stream_info(s)).state.last_seq) for s in STREAMS])


async def fanout(bus: Any, items: int) -> float:
    digest = await bus.artifacts.put(str(items).encode())
    return (await timed_runs(bus, "fanwide", 1, digest, f"fan{items}"))[0]


async def measure(runs: int, concurrent: int, items: list[int], slots: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home", sync="always") as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                raw_ack, raw_rate = await raw_limit(bus)
                floor = await skeleton(bus)
                digest = await bus.artifacts.put(b"0")
                pipelines = {"noop7": noop, "fanwide": wide}
                async with running_services(bus, pipelines, concurrency=slots):
                    await timed_runs(bus, "noop7", 1, digest, "warm")
                    before = await stored(bus)
                    chain = await timed_runs(bus, "noop7", runs, digest, "chain")
                    msgs = (await stored(bus) - before) / (runs + 1)  # + its warm-up run
                    wall = await concurrent_runs(bus, "noop7", concurrent, digest, "many")
                    fans = {n: await fanout(bus, n) for n in items}
    p50 = statistics.median(chain)
    rps = concurrent / wall
    out: dict[str, Any] = {
        "raw_ack_ms": raw_ack * 1e3,
        "raw_pipelined_msgs_s": raw_rate,
        "skeleton_ms_p50": floor * 1e3,
        "run_ms_p50": p50 * 1e3,
        "run_vs_skeleton": p50 / floor,
        "messages_per_run": msgs,
        "concurrent": concurrent,
        "worker_slots": slots,
        "runs_per_s": rps,
        "throughput_ratio": rps * msgs / raw_rate,
    }
    for n, seconds in fans.items():
        per_item = seconds / n
        out[f"fanout_{n}_s"] = seconds
        out[f"fanout_{n}_ms_per_item"] = per_item * 1e3
        out[f"fanout_{n}_per_item_vs_raw_ack"] = per_item / raw_ack
    return out


def report(r: dict[str, Any], items: list[int]) -> None:
    print(f"raw publish-and-ack (fsynced), p50:          {r['raw_ack_ms']:8.3f} ms")
    print(f"raw pipelined publish rate:                  {r['raw_pipelined_msgs_s']:8.0f} msg/s")
    print(f"I/O skeleton of a 7-phase chain, p50:        {r['skeleton_ms_p50']:8.1f} ms")
    print(
        f"7-phase no-op run, p50:                      {r['run_ms_p50']:8.1f} ms "
        f"({r['run_vs_skeleton']:.2f}x the skeleton)"
    )
    print(f"fsynced messages per 7-phase run:            {r['messages_per_run']:8.1f}")
    print(
        f"{r['concurrent']} runs at once:                          {r['runs_per_s']:8.1f} runs/s "
        f"(x msgs/run = {r['throughput_ratio']:.2f} of the raw pipelined rate)"
    )
    for n in items:
        print(
            f"fan-out of {n:>6} items, end to end:          {r[f'fanout_{n}_s']:8.2f} s "
            f"({r[f'fanout_{n}_ms_per_item']:.2f} ms an item, "
            f"{r[f'fanout_{n}_per_item_vs_raw_ack']:.1f}x one raw publish-and-ack)"
        )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="the write path: runs, fan-outs, messages")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--concurrent", type=int, default=50)
    p.add_argument("--items", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--slots", type=int, default=8, help="phases the worker runs at once")
    a = p.parse_args()
    report(asyncio.run(measure(a.runs, a.concurrent, a.items, a.slots)), a.items)
