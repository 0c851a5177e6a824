"""Appends per second through sisas vs raw nats-py JetStream publishes, same server, same run.

    .venv/bin/python bench/append.py [--signals N] [--runs R]

Starts an embedded nats-server (sync_interval: always, as sisas runs it) in a temp
folder. Raw publishes go to a stream with the same storage settings and carry a
Nats-Msg-Id, with payloads of the same size as the signals. Prints msgs/s and the
ratio sisas/raw for one-by-one (each append awaited) and pipelined (many in flight).
In sisas, appends to one run are sequential by design (each carries the expected last
sequence of its run), so sisas pipelines across runs: R runs appended concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import StreamConfig

from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.signals import ChainHead, Draft, PhaseCompleted, Resources, encode_signal
from sisas.signals.digest import semantic_digest

AT = datetime(2026, 1, 1, tzinfo=UTC)


def drafts(n: int) -> list[Draft]:
    return [
        Draft(
            body=PhaseCompleted(
                output_digest=semantic_digest(i),
                duration=0.125,
                resources=Resources(cpu_seconds=0.1, peak_rss_bytes=1 << 20),
                worker="bench-worker-1",
            ),
            phase=f"phase{i % 7}",
            at=AT,
        )
        for i in range(n)
    ]


async def rate(n: int, fn: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await fn()
    return n / (time.perf_counter() - start)


async def main(n_seq: int, n_pipe: int, runs: int, sync: str, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home", sync=sync) as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                js = bus.js
                await js.add_stream(
                    StreamConfig(
                        name="RAW",
                        subjects=["raw.>"],
                        storage="file",  # type: ignore[arg-type]
                        duplicate_window=120,
                    )
                )
                head = ChainHead(pipeline="bench", run_id="x")
                payload = encode_signal(head.extend(drafts(1))[0][0])
                print(
                    f"server {server.url}, sync_interval {sync}, payload {len(payload)} bytes, "
                    f"{rounds} rounds (raw and sisas alternate; medians reported)"
                )

                async def raw_seq(tag: str) -> None:
                    for i in range(n_seq):
                        await js.publish("raw.seq", payload, headers={"Nats-Msg-Id": f"{tag}{i}"})

                async def sisas_seq(tag: str) -> None:
                    head = ChainHead(pipeline="bench", run_id=f"seq{tag}")
                    last = 0
                    for d in drafts(n_seq):
                        sigs, head = head.extend([d])
                        last = (await bus.log.append(sigs, expected_last_seq=last)).last_seq

                async def raw_pipe(tag: str) -> None:
                    futs = [
                        await js.publish_async(
                            "raw.pipe", payload, headers={"Nats-Msg-Id": f"{tag}{i}"}
                        )
                        for i in range(n_pipe)
                    ]
                    await asyncio.gather(*futs)

                async def sisas_pipe(tag: str, per_append: int) -> None:
                    per_run = n_pipe // runs

                    async def one_run(r: int) -> None:
                        head = ChainHead(pipeline="bench", run_id=f"p{tag}-{per_append}-{r}")
                        last = 0
                        ds = drafts(per_run)
                        for i in range(0, per_run, per_append):
                            sigs, head = head.extend(ds[i : i + per_append])
                            last = (await bus.log.append(sigs, expected_last_seq=last)).last_seq

                    await asyncio.gather(*(one_run(r) for r in range(runs)))

                for rnd in range(rounds):
                    tag = f"r{rnd}"
                    cases: list[tuple[str, int, Callable[[], Awaitable[None]]]] = [
                        ("raw_seq", n_seq, functools.partial(raw_seq, tag)),
                        ("sisas_seq", n_seq, functools.partial(sisas_seq, tag)),
                        ("raw_pipe", n_pipe, functools.partial(raw_pipe, tag)),
                        ("sisas_pipe", n_pipe, functools.partial(sisas_pipe, tag, 1)),
                        ("sisas_pipe5", n_pipe, functools.partial(sisas_pipe, tag, 5)),
                    ]
                    for name, n, fn in cases:
                        samples.setdefault(name, []).append(await rate(n, fn))
                    print(
                        f"  round {rnd + 1}: "
                        + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in samples.items()),
                        flush=True,
                    )
    med = {k: statistics.median(v) for k, v in samples.items()}
    labels = {
        "raw_seq": "raw nats-py js.publish, one by one",
        "sisas_seq": "sisas seal + append, one by one (1 run)",
        "raw_pipe": f"raw nats-py js.publish_async, {n_pipe} in flight",
        "sisas_pipe": f"sisas seal + append, {runs} runs concurrently, 1 signal/append",
        "sisas_pipe5": f"sisas seal + append, {runs} runs concurrently, 5 signals/append",
    }
    print("medians:")
    for key, label in labels.items():
        print(f"  {label:<62} {med[key]:>9,.0f} signals/s")
    print("ratios (sisas / raw; 1.00 = as fast as raw, 0.50 = 2x slower):")
    print(f"  one by one                  {med['sisas_seq'] / med['raw_seq']:.2f}")
    print(f"  pipelined, 1 signal/append  {med['sisas_pipe'] / med['raw_pipe']:.2f}")
    print(f"  pipelined, 5 signals/append {med['sisas_pipe5'] / med['raw_pipe']:.2f}")
    summary = {
        "sync": sync,
        "runs": runs,
        "rounds": rounds,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps({**summary, **{k: round(v) for k, v in med.items()}}))
    return med


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--signals", type=int, default=3000, help="one-by-one messages")
    p.add_argument("--pipelined", type=int, default=20000, help="pipelined messages")
    p.add_argument("--runs", type=int, default=500, help="concurrent runs for sisas")
    p.add_argument(
        "--sync",
        default="always",
        help="server sync_interval: always (sisas default) or e.g. 2m (NATS default)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    a = p.parse_args()
    asyncio.run(main(a.signals, a.pipelined, a.runs, a.sync, a.rounds))
