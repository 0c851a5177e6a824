"""`sisas projections rebuild --jobs N`: several processes fold shares of the runs, one
writes; the tables (their state digest) are those of a serial fold, and a rebuild
stopped between two batches resumes from its checkpoint to the same tables."""

from __future__ import annotations

import functools
from pathlib import Path

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client.queries import ask
from sisas.projections.projector import Projector
from sisas.projections.store import ProjectionStore
from sisas.services.rebuild import fold_in_processes
from sisas.signals.names import log_subject
from tests.cli_process import server_env, sisas_async
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
