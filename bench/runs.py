"""Starting benchmark runs and waiting for their ends, the way a client would.

A run is started by publishing its ``start_run`` input (what ``sisas run`` does); its end
is seen on a core NATS subscription to the pipeline's commit subjects of the log (a
commit holding ``run_completed`` or ``run_failed``), so waiting costs no consumer per run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sisas.bus.inputs import publish_start
from sisas.bus.raw_client import Client
from sisas.signals.names import commit_subject

__all__ = ["RunEnds", "start", "timed_runs", "concurrent_runs"]


class RunEnds:
    """Futures resolved when a run of ``pipeline`` completes (``True``) or fails."""

    def __init__(self, nc: Any, pipeline: str) -> None:
        self._nc, self._pipeline = nc, pipeline
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self._subs: list[Any] = []
        self._raw: list[int] = []

    async def __aenter__(self) -> RunEnds:
        subject = commit_subject(self._pipeline, "*")
        if isinstance(self._nc, Client):  # as sisas's own watchers: no Msg, no headers parsed
            self._raw.append(await self._nc.subscribe_raw(subject, self._on_raw))
        else:
            self._subs.append(await self._nc.subscribe(subject, cb=self._on_msg))
        await self._nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        for sid in self._raw:
            await self._nc.unsubscribe_raw(sid)

    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._on_end(subject.split(b".")[3].decode(), data)

    async def _on_msg(self, msg: Any) -> None:
        self._on_end(msg.subject.split(".")[3], msg.data)

    def _on_end(self, run_id: str, data: bytes) -> None:
        fut = self._waiting.get(run_id)
        if fut is None or fut.done():
            return
        if b'"kind":"run_completed"' in data:
            fut.set_result(True)
        elif b'"kind":"run_failed"' in data:
            fut.set_result(False)

    def expect(self, run_id: str) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = fut
        return fut


async def start(bus: Any, pipeline: str, run_id: str, digest: str) -> None:
    await publish_start(bus.inputs, pipeline, run_id, input_digest=digest, seed=1)


async def _one(bus: Any, ends: RunEnds, pipeline: str, run_id: str, digest: str) -> float:
    done = ends.expect(run_id)
    t0 = time.perf_counter()
    await start(bus, pipeline, run_id, digest)
    ok = await asyncio.wait_for(done, 120)
    if not ok:
        raise RuntimeError(f"benchmark run {run_id} of {pipeline} failed: see `sisas show`")
    return time.perf_counter() - t0


async def timed_runs(
    bus: Any, pipeline: str, n: int, digest: str, tag: str, warmup: bool = True
) -> list[float]:
    """Wall seconds of ``n`` runs, one after the other (after one untimed warm-up run
    unless ``warmup`` is false)."""
    async with RunEnds(bus.nc, pipeline) as ends:
        if warmup:
            await _one(bus, ends, pipeline, f"{tag}-warmup", digest)
        return [await _one(bus, ends, pipeline, f"{tag}-{i}", digest) for i in range(n)]


async def concurrent_runs(bus: Any, pipeline: str, n: int, digest: str, tag: str) -> float:
    """Seconds from starting ``n`` runs at once until the last one completed."""
    async with RunEnds(bus.nc, pipeline) as ends:
        t0 = time.perf_counter()
        await asyncio.gather(*(_one(bus, ends, pipeline, f"{tag}-{i}", digest) for i in range(n)))
        return time.perf_counter() - t0
