"""Rebuilding the projection with several processes folding and one writing.

:func:`fold_in_processes` starts ``jobs`` processes, each folding the runs of its share
(:class:`sisas.projections.shares.ShareFold`: a few thousand run states in memory, every
one in a DuckDB file of its own under the data folder, removed when it ends). The first
reads the log and hands every message of another share on to its process, undecoded,
through a pipe (the log is read once, and a message decoded once, by its share; the
reader's share is half the others', as it also reads every message); each
cuts its rows into chunks at the same stream-sequence boundaries and sends them on its
own bounded queue (a slow writer holds the folders back; memory stays bounded by the
queues, the pipes and the fold's cache, however long the log). The caller, the
projector's writer, takes every share's chunk of a boundary, merged into one batch,
and writes it with the checkpoint in one transaction: DuckDB's appender, many rows per
call, one writer.

The reader hands a share the messages it read and how far it has read before it sends
a chunk of its own, so a share can cut each boundary as soon as the reader has passed
it: a share never waits for messages the reader holds while the writer waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import queue
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from sisas.bus.jetstream_log import JetStreamLog, decoded_logged
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.errors import ProjectionError
from sisas.projections.shares import Chunk, ShareFold, boundaries, merged
from sisas.projections.store import Batch
from sisas.signals.names import partition_of
from sisas.signals.records import LogGap

__all__ = ["CHUNK", "fold_in_processes"]

CHUNK: Final = 20_000
"""Stream sequences per chunk: per transaction of the writer."""

_QUEUED: Final = 4
"""Chunks a share may have ahead of the writer."""

_HANDED: Final = 1_024
"""Messages the reader gathers for a share before it sends them on."""

log = logging.getLogger(__name__)

_Message = tuple[int, str, bytes]
_Handed = tuple[int, list[_Message]] | None
"""What the reader sends a share: (how far it has read, the share's messages up to
there), or None when it has read everything."""


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
    pipes = [spawn.Pipe(duplex=False) for _ in range(1, jobs)]  # (share's end, reader's)
    procs = [
        spawn.Process(
            target=_share_main,
            args=(
                settings,
                share,
                jobs,
                first,
                cuts,
                queues[share],
                [sender for _, sender in pipes] if share == 0 else pipes[share - 1][0],
            ),
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
        for ends in pipes:
            for end in ends:
                end.close()


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
    pipes: list[multiprocessing.connection.Connection] | multiprocessing.connection.Connection,
) -> None:
    """Fold share ``share``: reading the log and handing the other shares their
    messages through ``pipes`` (share 0), or taking them from its pipe."""
    try:
        if isinstance(pipes, list):
            asyncio.run(_read_and_fold(settings, shares, first, cuts, out, pipes))
        else:
            asyncio.run(_fold_handed(settings, share, shares, cuts, out, pipes))
    except Exception as exc:  # the writer reports it, and stops
        with contextlib.suppress(Exception):
            out.put(f"{type(exc).__name__}: {exc}", timeout=5.0)


@contextlib.contextmanager
def _share_fold(
    settings: Settings, share: int, shares: int, cuts: list[int]
) -> Iterator[ShareFold]:
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fold-{share}-", dir=settings.home) as spill:
        fold = ShareFold(share, shares, cuts, Path(spill) / "share.duckdb")
        try:
            yield fold
        finally:
            fold.close()


def _share_of(subject: str, shares: int) -> int:
    """The share of the message on ``subject``: the reader's (0) holds one run in
    ``2 * shares - 1``, each other two, so the reader, which also reads every message,
    ends with the others (a message on no run's subject is the reader's)."""
    return (partition_of(subject, 2 * shares - 1) + 1) // 2


async def _read_and_fold(
    settings: Settings,
    shares: int,
    first: int,
    cuts: list[int],
    out: multiprocessing.Queue[Chunk | str],
    pipes: list[multiprocessing.connection.Connection],
) -> None:
    """Share 0: read the log, fold share 0's messages, hand the others on."""
    handed: list[list[_Message]] = [[] for _ in range(shares)]

    async def hand(share: int, position: int) -> None:
        sent: _Handed = (position, handed[share])
        handed[share] = []
        await asyncio.to_thread(pipes[share - 1].send, sent)

    async def put(chunks: Iterator[Chunk], position: int) -> None:
        for chunk in chunks:  # the others first get what they need to cut it too
            for share in range(1, shares):
                await hand(share, position)
            await asyncio.to_thread(out.put, chunk)

    with _share_fold(settings, 0, shares, cuts) as fold:
        async with open_bus(settings, name="sisas-fold-0") as bus:
            reader = bus.log
            assert isinstance(reader, JetStreamLog)  # what open_bus gives
            async for item in reader.read_messages(from_seq=first, to_seq=cuts[-1]):
                if isinstance(item, LogGap):
                    await put(fold.add(item), item.first - 1)
                    continue
                seq, subject, data = item
                await put(fold.reach(seq - 1), seq - 1)
                share = _share_of(subject, shares)
                if share == 0:
                    for record in decoded_logged(seq, subject, data):
                        await put(fold.add(record), seq - 1)
                    continue
                handed[share].append(item)
                if len(handed[share]) >= _HANDED:
                    await hand(share, seq)
        for share in range(1, shares):
            await hand(share, cuts[-1])
            await asyncio.to_thread(pipes[share - 1].send, None)
        for chunk in fold.finish():
            await asyncio.to_thread(out.put, chunk)


async def _fold_handed(
    settings: Settings,
    share: int,
    shares: int,
    cuts: list[int],
    out: multiprocessing.Queue[Chunk | str],
    pipe: multiprocessing.connection.Connection,
) -> None:
    """Share ``share`` > 0: fold the messages the reader hands on."""
    with _share_fold(settings, share, shares, cuts) as fold:
        while (got := await asyncio.to_thread(pipe.recv)) is not None:
            position, messages = got
            for seq, subject, data in messages:
                for record in decoded_logged(seq, subject, data):
                    for chunk in fold.add(record):
                        await asyncio.to_thread(out.put, chunk)
            for chunk in fold.reach(position):
                await asyncio.to_thread(out.put, chunk)
        for chunk in fold.finish():
            await asyncio.to_thread(out.put, chunk)
