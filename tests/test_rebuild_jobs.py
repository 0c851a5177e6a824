"""`sisas projections rebuild --jobs N`: several processes fold shares of the runs, one
writes; the tables (their state digest) are those of a serial fold, and a rebuild
stopped between two batches resumes from its checkpoint to the same tables."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from bench.synthetic import synthetic_runs
from sisas.bus.memory_log import MemoryLog
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client.queries import ask
from sisas.projections.projector import Projector
from sisas.projections.shares import Chunk, ShareFold, boundaries, merged
from sisas.projections.store import ProjectionStore
from sisas.services.rebuild import fold_in_processes
from sisas.signals import RunCancelled
from sisas.signals.codec import encode_signal
from sisas.signals.names import log_subject, partition_of, run_partition
from sisas.signals.records import LogRecord
from tests.cli_process import server_env, sisas_async
from tests.golden import make
from tests.runs import append_runs, outsider_publishes


async def _log(bus: Bus, settings: Settings) -> int:
    """Runs, a message that is not a signal on a run's subject and one on no run's."""
    await append_runs(bus, 12)
    url = settings.nats_url or ""
    await outsider_publishes(url, log_subject("synth", "run-0000003", "", "run_failed"), b"{")
    await outsider_publishes(url, "sisas.run.junk", b"not a run's subject")
    await append_runs(bus, 12, start_at=12)
    return await bus.log.last_seq()


async def _serial(bus: Bus, path: Path) -> str:
    store = ProjectionStore(path)
    try:
        await Projector(bus.log, store, identity=await bus.log.identity()).catch_up()
        return store.digest()
    finally:
        store.close()


async def test_a_rebuild_in_shares_gives_the_tables_of_a_serial_fold(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    target = await _log(bus, settings)
    serial = await _serial(bus, tmp_path / "serial.duckdb")
    for jobs, every in ((2, 5), (3, 4), (2, 10_000)):  # a run is one message
        store = ProjectionStore(tmp_path / f"shared-{jobs}-{every}.duckdb")
        shared = functools.partial(fold_in_processes, settings, every=every)
        projector = Projector(bus.log, store, identity=await bus.log.identity(), shared_fold=shared)
        try:
            seen: list[int] = []
            report = await projector.rebuild(jobs=jobs, progress=lambda a, _, s=seen: s.append(a))
            assert report.equal
            assert report.after == serial
            assert report.stream_seq == target
            assert seen[-1] == target
            if every == 5:
                assert seen[:3] == [5, 10, 15]  # one transaction per boundary
        finally:
            store.close()


async def test_a_rebuild_stopped_between_batches_resumes_to_the_same_tables(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    target = await _log(bus, settings)
    serial = await _serial(bus, tmp_path / "serial.duckdb")
    store = ProjectionStore(tmp_path / "stopped.duckdb")
    try:
        store.bind(await bus.log.identity())
        batches = fold_in_processes(settings, 1, target, 2, every=5)
        for _ in range(3):
            store.write(next(batches))
        batches.close()  # the folders are stopped; the checkpoint is at the third batch
        assert store.checkpoint() == 15
        projector = Projector(bus.log, store, identity=await bus.log.identity())
        assert await projector.catch_up() == target
        assert store.digest() == serial
    finally:
        store.close()


async def test_the_cli_rebuilds_with_jobs(bus: Bus, settings: Settings) -> None:
    await _log(bus, settings)
    env = server_env(settings)
    one = await sisas_async("projections", "rebuild", "--jobs", "1", "--json", env=env)
    two = await sisas_async("projections", "rebuild", "--jobs", "2", "--json", env=env)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert '"jobs": 2' in two.stdout
    digest = (await ask(bus, "digest")).result["digest"]
    assert f'"after": "{digest}"' in one.stdout and f'"after": "{digest}"' in two.stdout


@pytest.mark.parametrize("copy", [True, False], ids=["duplicate", "fork"])
async def test_shares_holding_one_run_in_memory_fold_what_the_projector_folds(
    copy: bool, tmp_path: Path
) -> None:
    """A share's fold keeps few run states in memory and reads the others back from its
    own file, as the projector reads its store: a run moving again after it was dropped,
    and an old signal stored again (duplicate) or a different one claiming its seq
    (fork), give the tables of a serial fold."""
    signals = make.intact_run()
    again = (
        signals[4]
        if copy
        else make.forge_after(signals[:4], RunCancelled(reason="forged", requested_by="mallory"))
    )
    log = MemoryLog()
    for run in synthetic_runs(3):
        await log.append(run, expected_last_seq=0)
    await log.append(signals, expected_last_seq=0)
    for run in synthetic_runs(3, start=3):
        await log.append(run, expected_last_seq=0)
    log.inject_raw(
        log_subject(again.pipeline, again.run_id, again.phase, again.kind), encode_signal(again)
    )
    for run in synthetic_runs(2, start=6):
        await log.append(run, expected_last_seq=0)
    last = await log.last_seq()
    serial = ProjectionStore(None)
    await Projector(log, serial, identity="mem").catch_up()
    assert serial.counts()["rejected"] == 1  # the signal stored again
    for shares, every in ((2, 1), (3, 2), (2, 1_000)):
        cuts = boundaries(1, last, every)
        chunks: list[list[Chunk]] = []
        for share in range(shares):
            spill = tmp_path / f"{shares}-{every}-{share}.duckdb"
            fold = ShareFold(share, shares, cuts, spill, cache_runs=1)
            keep = functools.partial(_in_share, share=share, shares=shares)
            mine = [c async for r in log.follow(keep=keep) for c in _added(fold, r)]
            chunks.append([*mine, *fold.finish()])
            fold.close()
        store = ProjectionStore(None)
        for at in range(len(cuts)):
            store.write(merged([chunks[share][at] for share in range(shares)]))
        assert store.digest() == serial.digest(), (shares, every)
        store.close()
    serial.close()


def _in_share(subject: str, *, share: int, shares: int) -> bool:
    return partition_of(subject, shares) == share


def _added(fold: ShareFold, record: LogRecord) -> list[Chunk]:
    return list(fold.add(record))


async def test_a_share_with_nothing_for_many_boundaries_waits_for_no_one(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """The first share reads the log and hands the others their messages: a stretch of
    the log that is all one share's (a run of one message per signal, many boundaries
    long, more than a share's queue holds) is cut by every share as soon as it is read
    past, whichever share holds it, so neither the writer nor a share waits forever."""
    runs = {(run_partition(r[0].run_id, 3) + 1) // 2: r for r in synthetic_runs(8)}
    one, zero = runs[1], runs[0]
    half = len(one) // 2
    for signals in (one[:half], zero, one[half:]):  # share 1's, share 0's, share 1's
        last = await bus.log.last_of_run(signals[0].run_id)
        expected = last.stream_seq if last else 0
        for s in signals:  # one message per signal
            expected = (await bus.log.append([s], expected_last_seq=expected)).last_seq
    target = await bus.log.last_seq()
    assert target > 4 * 3  # more boundaries than a share may queue, a share's in a row
    serial = await _serial(bus, tmp_path / "serial.duckdb")
    store = ProjectionStore(tmp_path / "shared.duckdb")
    shared = functools.partial(fold_in_processes, settings, every=1)
    projector = Projector(bus.log, store, identity=await bus.log.identity(), shared_fold=shared)
    try:
        assert await projector.catch_up(jobs=2) == target
        assert store.digest() == serial
    finally:
        store.close()
