"""Rebuilding the projection with several processes folding and one writing.

:func:`fold_in_processes` starts ``jobs`` processes; each reads the log and folds the
runs of its share (:class:`sisas.projections.shares.ShareFold`: a few thousand run
states in memory, every one in a DuckDB file of its own under the data folder, removed
when it ends), cutting its rows into chunks at the same stream-sequence boundaries, and
sends them on its own bounded queue (a slow writer holds the folders back; memory stays
bounded by the queues and the fold's cache, however long the log). The caller,
the projector's writer, takes every share's chunk of a boundary, merged into one batch,
and writes it with the checkpoint in one transaction: DuckDB's appender, many rows per
call, one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.errors import ProjectionError
from sisas.projections.shares import Chunk, ShareFold, boundaries, merged
from sisas.projections.store import Batch
from sisas.signals.names import partition_of

__all__ = ["CHUNK", "fold_in_processes"]

CHUNK: Final = 20_000
"""Stream sequences per chunk: per transaction of the writer."""

_QUEUED: Final = 4
"""Chunks a share may have ahead of the writer."""


def fold_in_processes(
    settings: Settings, first: int, target: int, jobs: int, *, every: int = CHUNK
) -> Iterator[Batch]:
    """The batches of the log from ``first`` to ``target``, folded by ``jobs`` processes,
    one per boundary, in order. Raises :class:`ProjectionError` if a process fails."""
    cuts = boundaries(first, target, every)
    if not cuts:
        return
    spawn = multiprocessing.get_context("spawn")
    queues = [spawn.Queue(maxsize=_QUEUED) for _ in range(jobs)]
    procs = [
        spawn.Process(
            target=_share_main,
            args=(settings, share, jobs, first, cuts, queues[share]),
            name=f"sisas-fold-{share}",
            daemon=True,
        )
        for share in range(jobs)
    ]
    for p in procs:
        p.start()
    try:
        for boundary in cuts:
            chunks = [_take(queues[share], procs[share], boundary) for share in range(jobs)]
            yield merged(chunks)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
        for q in queues:
            q.close()


def _take(
    q: multiprocessing.Queue[Chunk | str], proc: multiprocessing.process.BaseProcess, boundary: int
) -> Chunk:
    while True:
        try:
            got = q.get(timeout=1.0)
        except queue.Empty:
            if not proc.is_alive():
                raise ProjectionError(
                    f"{proc.name} ended (exit code {proc.exitcode}) before folding up to "
                    f"stream sequence {boundary}; the projection keeps what was written"
                ) from None
            continue
        if isinstance(got, str):
            raise ProjectionError(f"{proc.name} failed: {got}")
        if got.boundary != boundary:
            raise ProjectionError(
                f"{proc.name} sent stream sequence {got.boundary}, not {boundary}"
            )
        return got


def _share_main(
    settings: Settings,
    share: int,
    shares: int,
    first: int,
    cuts: list[int],
    out: multiprocessing.Queue[Chunk | str],
) -> None:
    try:
        asyncio.run(_fold_share(settings, share, shares, first, cuts, out))
    except Exception as exc:  # the writer reports it, and stops
        with contextlib.suppress(Exception):
            out.put(f"{type(exc).__name__}: {exc}", timeout=5.0)


async def _fold_share(
    settings: Settings,
    share: int,
    shares: int,
    first: int,
    cuts: list[int],
    out: multiprocessing.Queue[Chunk | str],
) -> None:
    def keep(subject: str) -> bool:
        return partition_of(subject, shares) == share

    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fold-{share}-", dir=settings.home) as spill:
        fold = ShareFold(share, shares, cuts, Path(spill) / "share.duckdb")
        try:
            async with open_bus(settings, name=f"sisas-fold-{share}") as bus:
                records = bus.log.follow(from_seq=first, to_seq=cuts[-1], keep=keep)
                async for record in records:
                    for chunk in fold.add(record):
                        await asyncio.to_thread(out.put, chunk)
                for chunk in fold.finish():
                    await asyncio.to_thread(out.put, chunk)
        finally:
            fold.close()
