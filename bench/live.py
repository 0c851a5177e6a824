"""Live latency: from a signal's append to its arrival in subscribed SSE clients.

    .venv/bin/python -m bench.live [--signals N] [--clients C] [--interval S]

Starts an embedded nats-server (sync_interval: always) and the dashboard (its hub on an
ordered consumer of the log, uvicorn, the /events stream) in this process, opens C
server-sent-event clients (httpx, in a second process so they do not share the event
loop of the server), then appends N signals one at a time, ``--interval`` apart, through
``bus.log.append``. Latency per signal and client = arrival time at the client minus the
time its append started (both ``time.time()`` on this machine).

The raw limit, measured in the same run on the same server: a JetStream publish (with
ack) of the same bytes to a raw stream, received by an ordered push consumer in the
client process: what any live view on JetStream cannot beat.

Prints p50, p99 and max per path, and the ratio of the p99s. Aim: dashboard p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.js.api import DeliverPolicy, StreamConfig

from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.dashboard.server import serving_dashboard
from sisas.signals import ChainHead, Draft, PhaseCompleted, encode_signal
from sisas.signals.digest import semantic_digest

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _sse_client(url: str, want: int, out: dict[int, float], ready: Any) -> None:
    async with httpx.AsyncClient(timeout=120) as http, http.stream("GET", f"{url}/events") as r:
        kind = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
                if kind == "hello":
                    ready.release()
            elif line.startswith("data: ") and kind == "signal":
                seq = int(json.loads(line[6:])["seq"])
                out[seq] = time.time()
                if len(out) >= want:
                    return


async def _raw_client(nats_url: str, want: int, out: dict[int, float], ready: Any) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        out[int(msg.headers["i"])] = time.time()
        if len(out) >= want:
            done.set()

    await js.subscribe(
        "rawlive.>", stream="RAWLIVE", ordered_consumer=True, cb=on_msg,
        config=nats.js.api.ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
    )  # fmt: skip
    await nc.flush()
    ready.release()
    await done.wait()
    await nc.close()


def _clients(kind: str, url: str, clients: int, want: int, ready: Any, results: Any) -> None:
    """Child process: ``clients`` subscribers; puts {client: {seq: arrival}}."""

    async def main() -> None:
        outs: list[dict[int, float]] = [{} for _ in range(clients)]
        client = _sse_client if kind == "sse" else _raw_client
        await asyncio.wait_for(
            asyncio.gather(*(client(url, want, outs[i], ready) for i in range(clients))), 300
        )
        results.put(outs)

    asyncio.run(main())


async def _measure(
    kind: str, url: str, clients: int, n: int, interval: float, send: Any
) -> list[float]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Semaphore(0), ctx.Queue()
    proc = ctx.Process(target=_clients, args=(kind, url, clients, n, ready, results))
    proc.start()
    for _ in range(clients):
        await asyncio.to_thread(ready.acquire, True, 120)
    await asyncio.sleep(0.2)
    sent: dict[int, float] = {}
    for i in range(1, n + 1):
        sent[i] = time.time()
        await send(i)
        await asyncio.sleep(interval)
    outs: list[dict[int, float]] = await asyncio.to_thread(results.get, True, 300)
    proc.join(10)
    return [(out[i] - sent[i]) * 1000 for out in outs for i in sent if i in out]


async def main(n: int, clients: int, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        async with EmbeddedServer(home, sync="always") as server:
            settings = Settings(home=home, nats_url=server.url, replicas=1)
            async with open_bus(settings, name="bench-live") as bus:
                await bus.js.add_stream(
                    StreamConfig(name="RAWLIVE", subjects=["rawlive.>"], storage="file")  # type: ignore[arg-type]
                )
                head = ChainHead(pipeline="bench", run_id="live-1")
                first = Draft(
                    body=PhaseCompleted(output_digest=semantic_digest(0)), phase="p", at=AT
                )
                payload = encode_signal(head.extend([first])[0][0])
                last = 0

                async def raw(i: int) -> None:
                    await bus.js.publish("rawlive.x", payload, headers={"i": str(i)})

                async def append(i: int) -> None:
                    nonlocal head, last
                    draft = Draft(
                        body=PhaseCompleted(output_digest=semantic_digest(i)),
                        phase=f"p{i % 7}",
                        at=datetime.now(UTC),
                    )
                    sigs, head = head.extend([draft])
                    last = (await bus.log.append(sigs, expected_last_seq=last)).last_seq

                raw_ms = await _measure("raw", server.url, clients, n, interval, raw)
                async with serving_dashboard(bus, port=0) as url:
                    sse_ms = await _measure("sse", url, clients, n, interval, append)
    report: dict[str, Any] = {}
    for name, values in (("raw", raw_ms), ("dashboard", sse_ms)):
        report[name] = {
            "samples": len(values),
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(_pct(values, 99), 2),
            "max_ms": round(max(values), 2),
        }
    report["ratio_p99"] = round(report["dashboard"]["p99_ms"] / report["raw"]["p99_ms"], 2)
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", type=int, default=300)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between appends")
    args = parser.parse_args()
    report = asyncio.run(main(args.signals, args.clients, args.interval))
    print(
        f"{args.signals} signals x {args.clients} clients, one append every "
        f"{args.interval * 1000:.0f} ms (python {sys.version.split()[0]})"
    )
    print(f"{'path':<12}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'samples':>10}")
    for name in ("raw", "dashboard"):
        r = report[name]
        print(f"{name:<12}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['max_ms']:>10}{r['samples']:>10}")
    verdict = "met" if report["dashboard"]["p99_ms"] < 100 else "NOT met"
    print(f"dashboard p99 / raw p99 = {report['ratio_p99']}; aim p99 < 100 ms: {verdict}")
    print(json.dumps(report))


if __name__ == "__main__":
    cli()
