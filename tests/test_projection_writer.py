"""The projector's writer thread: order, batches that grow under load, back-pressure,
errors that end a feed but not the projector, queries between batches, and crashes
between (or inside) batches that a restart repairs to exactly a full rebuild."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
from collections.abc import Callable

import pytest

from bench.synthetic import synthetic_runs
from sisas.bus.memory_log import MemoryLog
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.errors import ProjectionError
from sisas.projections.projector import Projector
from sisas.projections.store import ProjectionStore
from sisas.projections.writer import ProjectionWriter
from sisas.services.query import answer, local_projector, projection_path
from sisas.signals.records import LogGap, LogRecord, StoredSignal
from tests.cli_process import SISAS, server_env
from tests.runs import append_runs

THREAD = "sisas-projection-writer"


def _seq(i: int) -> LogGap:
    """A record standing for stream sequence ``i`` (the writer does not look inside)."""
    return LogGap(first=i, last=i)


class Recorder:
    """An ``apply`` that records each batch's sequences; the first batch waits at
    ``gate`` until the test opens it, and a batch holding ``fail_at`` raises."""

    def __init__(self, fail_at: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.started, self.gate = threading.Event(), threading.Event()
        self.fail_at = fail_at

    def __call__(self, records: list[LogRecord]) -> None:
        assert all(isinstance(r, LogGap) for r in records)
        seqs = [r.first for r in records if isinstance(r, LogGap)]
        self.threads.add(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(30)
        if self.fail_at in seqs:
            self.fail_at = 0  # once: the feed that starts again goes through
            raise ProjectionError(f"disk full at {seqs[-1]}")
        self.batches.append(seqs)

    @property
    def applied(self) -> list[int]:
        return [s for batch in self.batches for s in batch]


async def _until(writer: ProjectionWriter, done: Callable[[], bool]) -> None:
    while not done():
        await asyncio.wait_for(writer.changed(), 30)


async def test_records_are_applied_in_order_in_batches_that_grow_while_it_is_busy() -> None:
    rec = Recorder()
    writer = ProjectionWriter(rec, max_batch=10, capacity=100)
    try:
        await writer.put(_seq(1), writer.epoch)
        await asyncio.to_thread(rec.started.wait, 30)  # batch [1] is being written…
        for i in range(2, 31):  # …while 29 more records queue up behind it
            await writer.put(_seq(i), writer.epoch)
        rec.gate.set()
        await _until(writer, lambda: len(rec.applied) == 30)
        order = await writer.call(lambda: threading.current_thread().name)
    finally:
        await writer.close()
    assert rec.applied == list(range(1, 31))
    # one record when it was alone, then everything queued, up to the cap
    assert [len(b) for b in rec.batches] == [1, 10, 10, 9]
    assert rec.threads == {THREAD} and order == THREAD


async def test_a_full_queue_makes_the_reader_wait_and_nothing_is_dropped() -> None:
    rec = Recorder()
    writer = ProjectionWriter(rec, max_batch=2, capacity=3)
    try:
        await writer.put(_seq(1), writer.epoch)
        await asyncio.to_thread(rec.started.wait, 30)
        for i in (2, 3, 4):
            await writer.put(_seq(i), writer.epoch)
        blocked = asyncio.create_task(writer.put(_seq(5), writer.epoch))
        await asyncio.sleep(0.2)  # every chance to get through, if it could
        assert not blocked.done()
        assert writer.queued == 3
        rec.gate.set()
        await asyncio.wait_for(blocked, 30)  # room once the thread took a batch
        for i in range(6, 41):
            await writer.put(_seq(i), writer.epoch)
        await _until(writer, lambda: len(rec.applied) == 40)
    finally:
        await writer.close()
    assert rec.applied == list(range(1, 41))
    assert max(len(b) for b in rec.batches) == 2


async def test_a_failed_batch_ends_its_feed_and_the_next_feed_goes_through() -> None:
    rec = Recorder(fail_at=3)
    rec.gate.set()
    writer = ProjectionWriter(rec, max_batch=1, capacity=10, linger=60)
    try:
        first = writer.epoch
        for i in (1, 2, 3, 4, 5):
            await writer.put(_seq(i), first)
        writer.hurry()
        with pytest.raises(ProjectionError, match="disk full at 3"):
            await asyncio.wait_for(writer.failed(first), 30)
        with pytest.raises(ProjectionError, match="disk full at 3"):
            await writer.put(_seq(6), first)  # the old feed is over
        assert rec.applied == [1, 2]  # 4 and 5, queued behind the failure, were dropped
        assert writer.epoch != first
        for i in (3, 4, 5, 6):  # a new feed, from the checkpoint
            await writer.put(_seq(i), writer.epoch)
        writer.hurry()
        await _until(writer, lambda: len(rec.applied) == 6)
    finally:
        await writer.close()
    assert rec.applied == [1, 2, 3, 4, 5, 6]


async def test_jobs_run_between_batches_in_the_thread_and_raise_to_the_caller() -> None:
    rec = Recorder()
    writer = ProjectionWriter(rec, max_batch=5, capacity=20, linger=60)
    try:
        await writer.put(_seq(1), writer.epoch)
        writer.hurry()
        await asyncio.to_thread(rec.started.wait, 30)
        for i in range(2, 5):
            await writer.put(_seq(i), writer.epoch)
        urgent = asyncio.create_task(writer.call(lambda: list(rec.applied)))
        ordered = asyncio.create_task(writer.call(lambda: list(rec.applied), ordered=True))
        rec.gate.set()
        # between batch [1] and the records queued: before them, or after them
        assert await asyncio.wait_for(urgent, 30) == [1]
        assert await asyncio.wait_for(ordered, 30) == [1, 2, 3, 4]
        with pytest.raises(ZeroDivisionError):
            await writer.call(lambda: 1 // 0)
        assert await writer.call(lambda: "still serving") == "still serving"
    finally:
        await writer.close()
    with pytest.raises(ProjectionError, match="closed"):
        await writer.call(lambda: None)


# -- the projector on its writer thread -------------------------------------------------


async def _log(runs: int) -> MemoryLog:
    log = MemoryLog()
    for signals in synthetic_runs(runs):
        await log.append(signals, expected_last_seq=0)
    return log


async def _more(log: MemoryLog, runs: int, start: int, pause: float = 0.0) -> None:
    for signals in synthetic_runs(runs, start=start):
        await log.append(signals, expected_last_seq=0)
        await asyncio.sleep(pause)  # appended while the projector follows


async def _signals_through(log: object, seq: int) -> int:
    """Signals stored in the log's messages 1..``seq`` (a commit holds several)."""
    return sum(
        [isinstance(r, StoredSignal) and r.stream_seq <= seq async for r in log.follow()]  # type: ignore[attr-defined]
    )


async def _full_digest(log: MemoryLog) -> str:
    """The digest of a projection folded from the whole log in one go."""
    store = ProjectionStore(None)
    try:
        await Projector(log, store, identity="mem").catch_up()
        return store.digest()
    finally:
        store.close()


async def test_a_failing_write_is_logged_and_retried_and_the_projector_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = await _log(10)
    store = ProjectionStore(None)
    projector = Projector(log, store, identity="mem", batch_size=50)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        assert await projector.wait_applied(await log.last_seq(), 30)
        # the file damaged behind its back: each write fails until it is repaired
        await projector.read(lambda s: s.con.execute("ALTER TABLE metrics RENAME TO away"))
        await _more(log, 5, start=10)
        log.inject_raw("sisas.run.synth.run-x._.run_requested", b"{not json")  # bad input
        while "writing the projection failed" not in caplog.text:
            assert not task.done()
            await asyncio.sleep(0.05)
        assert projector.applied_seq < await log.last_seq()
        await projector.read(lambda s: s.con.execute("ALTER TABLE away RENAME TO metrics"))
        await _more(log, 5, start=15)
        assert await projector.wait_applied(await log.last_seq(), 30)
        assert not task.done()
        counts = await projector.read(ProjectionStore.counts)
        assert counts["runs"] == 20 and counts["rejected"] == 1
        assert counts["signals"] == await _signals_through(log, await log.last_seq())
        live = await projector.read(ProjectionStore.digest)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert live == await _full_digest(log)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "the projector will retry it" in errors[0]  # logged as before
    store.close()


async def test_queries_see_the_store_between_batches_while_it_follows_and_rebuilds() -> None:
    log = await _log(5)
    store = ProjectionStore(None)
    projector = Projector(log, store, identity="mem", batch_size=40, linger=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    seen: list[tuple[int, int, int, str]] = []

    def snapshot(s: ProjectionStore) -> tuple[int, int, int, str]:
        signals = s.con.execute("SELECT count(*) FROM signals").fetchone()
        assert signals is not None
        name = threading.current_thread().name
        return projector.applied_seq, s.checkpoint(), int(signals[0]), name

    try:
        assert await projector.wait_applied(await log.last_seq(), 30)
        appending = asyncio.create_task(_more(log, 60, start=5, pause=0.005))
        while not appending.done():
            seen.append(await projector.read(snapshot))
            await asyncio.sleep(0.01)
        report = await projector.rebuild()  # while it follows: the live feed waits
        await _more(log, 5, start=65)
        assert await projector.wait_applied(await log.last_seq(), 30)
        live = await projector.read(ProjectionStore.digest)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert report.equal, (report.before, report.after)
    assert live == await _full_digest(log)
    assert seen
    for applied, checkpoint, signals, name in seen:
        assert applied == checkpoint  # never half a batch, never half a commit
        assert signals == await _signals_through(log, applied)
        assert name == THREAD
    store.close()


async def test_someone_waiting_does_not_wait_for_the_linger() -> None:
    log = await _log(3)
    store = ProjectionStore(None)
    projector = Projector(log, store, identity="mem", linger=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))

    async def report(*_: object) -> None:
        return None

    try:
        assert await projector.wait_applied(await log.last_seq(), 30)
        await _more(log, 2, start=3)
        reply = await answer(projector, "runs", b"{}", report=report, freshness=30)
        assert reply["lag"] == 0 and len(reply["result"]) == 5  # read-your-writes
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    store.close()


@pytest.mark.parametrize("where", ["between_batches", "mid_batch"])
async def test_a_crash_between_or_inside_batches_resumes_to_exactly_a_full_rebuild(
    bus: Bus, settings: Settings, where: str
) -> None:
    await append_runs(bus, 20)
    last = await bus.log.last_seq()
    env = server_env(settings, SISAS_FAILPOINTS=f"projector.{where}=3")
    proc = await asyncio.to_thread(
        subprocess.run,
        [*SISAS, "projector", "--batch-size", "7"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]  # SIGKILLed at the failpoint
    store = ProjectionStore(projection_path(settings))
    try:
        applied = store.checkpoint()
        counts = store.counts()
        distinct = store.con.execute("SELECT count(DISTINCT stream_seq) FROM signals").fetchone()
    finally:
        store.close()
    # the committed batches exactly: 3 of them, or 2 when the third died uncommitted
    assert 0 < applied < last
    assert distinct == (applied,)  # every message applied, whole
    assert counts["signals"] == await _signals_through(bus.log, applied)
    async with local_projector(bus) as projector:
        await projector.catch_up()
        report = await projector.rebuild()
    assert report.equal and report.stream_seq == last
    fresh = ProjectionStore(None)
    try:
        await Projector(bus.log, fresh, identity=await bus.log.identity()).catch_up()
        assert report.after == fresh.digest()
    finally:
        fresh.close()
