"""Event-loop lag of one process hosting the orchestrator, a worker and the projector.

    .venv/bin/python -m bench looplag [--items N] [--rounds R] [--modes thread,loop,off]
                                      [--tick S] [--linger S]

What ``sisas up`` runs, in this process: an orchestrator, a worker (2 slots) and the
projector with its query service, composed as ``services/host.py`` composes them, on a
fresh embedded nats-server (``sync_interval: always``) and data folder per measurement.
After a warm-up run of 10 items, one run of the ``fanwide`` pipeline (bench/pipelines.py)
fans out over N items (one attempt each: ~5 signals per item). While it goes, a timer
on the event loop asks to wake every ``--tick`` seconds; its lag is how late it woke
(p50, p99, max): every other coroutine of the process (the orchestrator's decisions, the
worker's reports, the query service) waits as long.

- ``end to end``: from publishing the run's start to seeing its ``run_completed``;
- ``projected``: until the projector holds the log's last signal (what ``sisas show``
  waits for);
- ``cpu``: the process's CPU seconds over the same span (all threads).

Modes, measured in turn within each round:

- ``thread``: the projector as sisas runs it (folds and writes in its writer thread;
  ``--linger`` overrides how long a batch that is not full waits for more);
- ``loop``: the projector as it was before the writer thread: each live batch folded and
  written on the event loop (:class:`OnLoopProjector`, kept here for the comparison);
- ``off``: no projector (``sisas up --no-projector``).

Prints each mode's median over the rounds and the ratios to ``loop`` and to ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from bench.pipelines import wide
from bench.runs import RunEnds, start
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.errors import ProjectionError
from sisas.projections.projector import Projector
from sisas.services.host import running_services
from sisas.services.query import QueryService, local_projector
from sisas.signals.records import LogRecord

MODES = ("thread", "loop", "off")


class OnLoopProjector(Projector):
    """The live projector before the writer thread (main at f472876): the log consumer's
    records grouped into batches (up to ``batch_size``, or what arrived within 50 ms),
    each folded and written on the event loop. Catching up and queries as today."""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._follow_on_loop(stop)
            except ProjectionError as exc:
                print(f"projector: {exc}", flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _follow_on_loop(self, stop: asyncio.Event) -> None:
        await self.catch_up()
        stream = self.log.follow(from_seq=self.applied_seq + 1, live=True)
        batches = _batches(stream, self.batch_size, 0.05)
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(anext(batches))
                done, _ = await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    return
                async with self._lock:
                    self.apply(nxt.result())  # fold and write, here on the loop
                self._changed()
        finally:
            stopping.cancel()
            await batches.aclose()


async def _batches(  # the projector's, at f472876
    records: AsyncIterator[LogRecord], size: int, linger: float
) -> AsyncGenerator[list[LogRecord], None]:
    """Group ``records`` into lists of at most ``size``: a list is yielded when full, or
    ``linger`` seconds after its first record when the log goes quiet. Reading runs
    ahead by at most two lists while the consumer folds."""
    ready: collections.deque[list[LogRecord]] = collections.deque()
    current: list[LogRecord] = []
    wake, room = asyncio.Event(), asyncio.Event()
    room.set()
    finished: list[BaseException | None] = []

    async def pump() -> None:
        nonlocal current
        try:
            async for r in records:
                current.append(r)
                if len(current) >= size:
                    ready.append(current)
                    current = []
                    wake.set()
                    if len(ready) >= 2:
                        room.clear()
                        await room.wait()
                elif len(current) == 1:
                    wake.set()
        except Exception as exc:  # handed to the consumer after the records before it
            finished.append(exc)
        else:
            finished.append(None)
        wake.set()

    reader = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            if not ready and not current:
                if finished:
                    break
                wake.clear()
                await wake.wait()
                continue
            if not ready and not finished:  # a partial list: give it ``linger`` to fill
                deadline = loop.time() + linger
                while not ready and not finished and loop.time() < deadline:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), deadline - loop.time())
            if ready:
                batch = ready.popleft()
                room.set()
            else:
                batch, current = current, []
            if batch:
                yield batch
        if finished and finished[0] is not None:
            raise finished[0]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _lag(stop: asyncio.Event, tick: float, out: list[float]) -> None:
    """Append how late (s) a timer of ``tick`` seconds wakes, until ``stop``."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(tick)
        out.append(max(0.0, time.perf_counter() - t - tick))


@contextlib.asynccontextmanager
async def _host(bus: Bus, mode: str, linger: float | None) -> AsyncIterator[Projector | None]:
    """Orchestrator, worker and (unless ``off``) the projector and its query service."""
    async with contextlib.AsyncExitStack() as stack:
        proj: Projector | None = None
        tasks: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        if mode != "off":
            proj = await stack.enter_async_context(local_projector(bus))
            if mode == "loop":
                proj.__class__ = OnLoopProjector
            elif linger is not None:
                proj.linger = linger
            await proj.open()
            service = QueryService(bus.nc, proj)
            await service.start()
            stack.push_async_callback(service.stop)
            tasks.append(asyncio.create_task(proj.run(stop), name="projector"))
        try:
            async with running_services(bus, {"fanwide": wide}, concurrency=2):
                yield proj
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def _run(bus: Bus, ends: RunEnds, run_id: str, digest: str) -> float:
    done = ends.expect(run_id)
    t0 = time.perf_counter()
    await start(bus, "fanwide", run_id, digest)
    if not await asyncio.wait_for(done, 1800):
        raise RuntimeError(f"benchmark run {run_id} failed: see `sisas show {run_id}`")
    return time.perf_counter() - t0


async def measure(
    mode: str, items: int, tick: float, linger: float | None = None
) -> dict[str, Any]:
    """One run of ``items`` under ``mode``: loop lag, end-to-end and projected seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        async with EmbeddedServer(home, sync="always") as server:
            settings = Settings(home=home, nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus, _host(bus, mode, linger) as proj:
                warm = await bus.artifacts.put(b"10")
                digest = await bus.artifacts.put(str(items).encode())
                async with RunEnds(bus.nc, "fanwide") as ends:
                    await _run(bus, ends, "warmup", warm)
                    if proj is not None:
                        await proj.wait_applied(await bus.log.last_seq(), 60)
                    lags: list[float] = []
                    sampling = asyncio.Event()
                    sampler = asyncio.create_task(_lag(sampling, tick, lags))
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    e2e = await _run(bus, ends, "measured", digest)
                    if proj is not None:
                        await proj.wait_applied(await bus.log.last_seq(), 600)
                    projected = time.perf_counter() - t0
                    cpu = time.process_time() - cpu0
                    sampling.set()
                    await sampler
                signals = await bus.log.last_seq()
    row = {
        "mode": mode,
        "items": items,
        "signals": signals,
        "end_to_end_s": e2e,
        "projected_s": projected,
        "cpu_s": cpu,
        "lag_p50_ms": _pct(lags, 50) * 1e3,
        "lag_p99_ms": _pct(lags, 99) * 1e3,
        "lag_max_ms": max(lags) * 1e3,
        "ticks": len(lags),
    }
    print(
        f"  {mode:>6}: end to end {e2e:6.2f} s, projected {projected:6.2f} s, cpu "
        f"{cpu:6.2f} s; loop lag p50 {row['lag_p50_ms']:6.2f} ms, p99 "
        f"{row['lag_p99_ms']:7.2f} ms, max {row['lag_max_ms']:7.1f} ms",
        flush=True,
    )
    return row


def summarize(rows: list[dict[str, Any]], modes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each mode's median over the rounds of every figure."""
    keys = ("end_to_end_s", "projected_s", "cpu_s", "lag_p50_ms", "lag_p99_ms", "lag_max_ms")
    return {
        mode: {k: statistics.median(r[k] for r in rows if r["mode"] == mode) for k in keys}
        for mode in modes
    }


def _ratios(summary: dict[str, dict[str, float]], ref: str, of: str) -> str:
    a, b = summary[of], summary[ref]
    return (
        f"  {of} / {ref}: end to end {a['end_to_end_s'] / b['end_to_end_s']:.2f}x, "
        f"projected {a['projected_s'] / b['projected_s']:.2f}x, cpu "
        f"{a['cpu_s'] / b['cpu_s']:.2f}x; lag p99 {a['lag_p99_ms'] / b['lag_p99_ms']:.2f}x, "
        f"max {a['lag_max_ms'] / b['lag_max_ms']:.2f}x"
    )


async def main(
    items: int, rounds: int, modes: tuple[str, ...], tick: float, linger: float | None
) -> None:
    rows = []
    for r in range(rounds):
        print(f"round {r + 1} of {rounds}, {items:,} items:", flush=True)
        order = modes if r % 2 == 0 else tuple(reversed(modes))  # no mode always goes first
        for mode in order:
            rows.append(await measure(mode, items, tick, linger))
    summary = summarize(rows, modes)
    print(f"median of {rounds} round(s), {items:,} items, {rows[0]['signals']:,} signals:")
    for mode in modes:
        s = summary[mode]
        print(
            f"  {mode:>6}: end to end {s['end_to_end_s']:6.2f} s, projected "
            f"{s['projected_s']:6.2f} s, cpu {s['cpu_s']:6.2f} s; loop lag p50 "
            f"{s['lag_p50_ms']:6.2f} ms, p99 {s['lag_p99_ms']:7.2f} ms, max "
            f"{s['lag_max_ms']:7.1f} ms"
        )
    for ref, of in (("loop", "thread"), ("off", "thread"), ("off", "loop")):
        if ref in summary and of in summary:
            print(_ratios(summary, ref, of))
    print(json.dumps({"rows": rows, "median": summary}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=5_000, help="fan-out width of the run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--modes", default=",".join(MODES), help="of: " + ", ".join(MODES))
    p.add_argument("--tick", type=float, default=0.01, help="the timer's period, s")
    p.add_argument(
        "--linger",
        type=float,
        default=None,
        help="the thread projector's linger, s (default: its own)",
    )
    a = p.parse_args()
    chosen = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}: choose of {', '.join(MODES)}")
    asyncio.run(main(a.items, a.rounds, chosen, a.tick, a.linger))
