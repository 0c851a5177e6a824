"""Concurrency limits: runs of a limited pipeline wait for a slot in priority order,
never more running at once than the limit (measured from the log), each queued and
released run a recorded signal with its reason."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator

import pytest
from rich.console import Console

from sisas.bus.limits import clear_limit, limit_of, set_limit
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.cli.progress import advise
from sisas.client import Client
from sisas.client.verification import verify_log
from sisas.errors import InvalidPipeline
from sisas.handlers.admission import (
    TAGS_CHAIN,
    AdmissionState,
    admission_chain,
    decide_release,
    decide_request,
    decide_tag_release,
    decide_tag_request,
    evolve_admission,
)
from sisas.loader import load_pipelines
from sisas.pipeline import Context, Pipeline
from sisas.services.admission import AdmissionService
from sisas.services.host import running_services
from sisas.signals import RunQueued, RunReleased, RunWithdrawn, StoredSignal
from tests.cli_process import server_env, sisas_async
from tests.runs import TEST_PIPES, wait_end


def test_a_freed_slot_goes_to_the_highest_priority_then_the_first_asked() -> None:
    state = AdmissionState()
    for run_id, priority in (("a", 0), ("b", 0), ("c", 5), ("d", 5)):
        d = decide_request(state, "p", 1, run_id, priority=priority, request_seq=1)
        assert d is not None
        state = evolve_admission(state, d)
    assert state.holders == ("a",) and [w.run_id for w in state.waiting] == ["b", "c", "d"]
    assert decide_request(state, "p", 1, "b", priority=0, request_seq=1) is None  # again
    assert decide_release(state, "p", 1, ()) is None  # a still runs
    order = []
    holder = "a"
    while (d := decide_release(state, "p", 1, (holder,))) is not None:
        assert d.reason.startswith(f"{holder} ended")
        state = evolve_admission(state, d)
        holder = d.run_id
        order.append(holder)
    assert order == ["c", "d", "b"]


@pytest.fixture
async def admitting(bus: Bus) -> AsyncIterator[Bus]:
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=8) as stop:
        service = AdmissionService(bus, interval=0.05)
        task = asyncio.create_task(service.run(stop))
        yield bus
        stop.set()
        await task


async def _chain(bus: Bus, pipeline: str) -> list[RunQueued | RunReleased | RunWithdrawn]:
    records = await bus.log.read_run(admission_chain(pipeline))
    return [r.signal.body for r in records if isinstance(r, StoredSignal)]  # type: ignore[misc]


async def test_never_more_runs_at_once_than_the_limit_measured_from_the_log(
    admitting: Bus, settings: Settings
) -> None:
    bus = admitting
    await set_limit(bus, "slow", 2)
    client = Client(bus)
    handles = [await client.start("slow", {"seconds": 0.6}, seed=i) for i in range(6)]
    spans = []
    for h in handles:
        state, signals = await wait_end(bus, h.run_id)
        assert state.status == "completed", state.error
        # A signal's time is that of the input that caused it: a run's work begins with
        # its first phase_started (a worker's report), its end is its last signal.
        began = next(s.at for s in signals if s.kind == "phase_started")
        spans.append((began, signals[-1].at))
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2, spans  # never more than the limit, as the log tells it
    chain = await _chain(bus, "slow")
    queued = [d for d in chain if isinstance(d, RunQueued)]
    released = [d for d in chain if isinstance(d, RunReleased)]
    assert sorted(d.run_id for d in released) == sorted(h.run_id for h in handles)
    assert len(queued) >= 3 and all("max_concurrent_runs = 2" in d.reason for d in queued)
    assert all(d.waited for d in released if d.run_id in {q.run_id for q in queued})
    listed = await sisas_async("limits", "list", "--json", env=server_env(settings))
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["limits"]
    assert row["pipeline"] == "slow" and row["limit"] == 2 and row["waiting"] == []
    none = await sisas_async("limits", "clear", "chain7", env=server_env(settings))
    assert none.returncode == 1 and "has no limit" in none.stderr
    zero = await sisas_async("limits", "set", "slow", "0", env=server_env(settings))
    assert zero.returncode == 2 and "give 1 or more" in zero.stderr
    report = await verify_log(bus, None, projection=False)
    assert report.intact, [v.findings for v in report.verdicts if not v.intact]


async def test_the_waiting_run_with_the_highest_priority_goes_first(admitting: Bus) -> None:
    bus = admitting
    await set_limit(bus, "slow", 1)
    client = Client(bus)
    first = await client.start("slow", {"seconds": 1.0}, seed=1)
    while not any(isinstance(d, RunReleased) for d in await _chain(bus, "slow")):
        await asyncio.sleep(0.05)
    low = await client.start("slow", {"seconds": 0.0}, seed=2, priority=0)
    high = await client.start("slow", {"seconds": 0.0}, seed=3, priority=5)
    for h in (first, low, high):
        assert (await wait_end(bus, h.run_id))[0].status == "completed"
    released = [d.run_id for d in await _chain(bus, "slow") if isinstance(d, RunReleased)]
    assert released == [first.run_id, high.run_id, low.run_id]


async def test_a_lifted_limit_releases_the_runs_still_waiting(admitting: Bus) -> None:
    bus = admitting
    await set_limit(bus, "slow", 1)
    client = Client(bus)
    first = await client.start("slow", {"seconds": 3.0}, seed=1)
    waiting = [await client.start("slow", {"seconds": 0.0}, seed=i) for i in (2, 3)]
    while sum(isinstance(d, RunQueued) for d in await _chain(bus, "slow")) < 2:
        await asyncio.sleep(0.05)
    assert await clear_limit(bus, "slow") == 1
    for h in waiting:  # released while the first still runs
        assert (await wait_end(bus, h.run_id))[0].status == "completed"
    assert (await client.state(first.run_id)).status == "running"
    await wait_end(bus, first.run_id)


capped = Pipeline("capped", version="1", max_concurrent_runs=1)


@capped.phase()
def pause(ctx: Context, input: float) -> float:
    time.sleep(input)
    return input


async def test_a_limit_declared_in_the_pipeline_is_set_by_the_services_that_load_it(
    bus: Bus,
) -> None:
    async with running_services(bus, {"capped": capped}):
        assert await limit_of(bus, "capped") == 1
        client = Client(bus)
        handles = [await client.start("capped", 0.3, seed=i) for i in range(3)]
        for h in handles:
            assert (await wait_end(bus, h.run_id))[0].status == "completed"
    chain = await _chain(bus, "capped")
    assert sum(isinstance(d, RunQueued) for d in chain) == 2  # one at a time
    with pytest.raises(InvalidPipeline, match="give 1 or more"):
        Pipeline("none", max_concurrent_runs=0)


async def test_a_run_cancelled_while_it_waits_leaves_the_queue_and_never_takes_a_slot(
    admitting: Bus, settings: Settings
) -> None:
    bus = admitting
    await set_limit(bus, "slow", 1)
    client = Client(bus)
    first = await client.start("slow", {"seconds": 30.0}, seed=1)
    waiting = await client.start("slow", {"seconds": 0.0}, seed=2)
    later = await client.start("slow", {"seconds": 0.0}, seed=3)
    while sum(isinstance(d, RunQueued) for d in await _chain(bus, "slow")) < 2:
        await asyncio.sleep(0.05)
    env = server_env(settings)
    # `show` of a waiting run says where it waits and how to leave, not "no such run".
    shown = await sisas_async("show", later.run_id, env={**env, "COLUMNS": "250"})
    assert shown.returncode == 0, shown.stderr
    assert "queued" in shown.stdout and "(slow allows 1 run at once)" in shown.stdout
    assert "2nd of 2 waiting" in shown.stdout and f"sisas cancel {later.run_id}" in shown.stdout
    as_json = json.loads((await sisas_async("show", later.run_id, "--json", env=env)).stdout)
    assert as_json["status"] == "queued" and "waits for a slot" in as_json["waiting"]
    # `run --wait` (and batch) say the same, not "an orchestrator has not taken it (busy?)".
    notes = Console(file=io.StringIO(), width=300)
    advice = asyncio.create_task(
        advise(
            bus, "slow", "x", notes=notes, started=lambda: False, every=0.01, run_id=later.run_id
        )
    )
    while not notes.file.getvalue():  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    advice.cancel()
    said = notes.file.getvalue()  # type: ignore[attr-defined]
    assert "waits for a slot (slow allows 1 run at once)" in said and "busy" not in said, said
    cancelled = await sisas_async("cancel", waiting.run_id, "--reason", "not needed", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    state, signals = await wait_end(bus, waiting.run_id)
    assert state.status == "cancelled"
    assert [s.kind for s in signals] == ["run_requested", "run_cancelled"]  # nothing started
    chain = await _chain(bus, "slow")
    [withdrawn] = [d for d in chain if isinstance(d, RunWithdrawn)]
    assert withdrawn.run_id == waiting.run_id and "its slot never taken" in withdrawn.reason
    assert waiting.run_id not in {d.run_id for d in chain if isinstance(d, RunReleased)}
    assert (await client.state(first.run_id)).status == "running"  # the slot stays first's
    listed = await sisas_async("limits", "list", "--json", env=env)
    [row] = json.loads(listed.stdout)["limits"]
    assert row["holding"] == [first.run_id]
    assert [w["run_id"] for w in row["waiting"]] == [later.run_id]
    await client.cancel(first.run_id)
    assert (await wait_end(bus, later.run_id))[0].status == "completed"  # the next goes
    runs = await sisas_async("runs", "--json", env=env)
    assert runs.returncode == 0, runs.stderr
    status = {r["run_id"]: r["status"] for r in json.loads(runs.stdout)["runs"]}
    assert status[waiting.run_id] == "cancelled"
    report = await verify_log(bus, None, projection=False)
    assert report.intact, [v.findings for v in report.verdicts if not v.intact]
    again = await sisas_async("limits", "set", "slow", "1", env=env)
    assert again.returncode == 0 and "at most 1 run of slow at once" in again.stdout
    assert "note:" not in again.stderr, again.stderr  # a registered pipeline
    typo = await sisas_async("limits", "set", "slwo", "2", env=env)
    assert typo.returncode == 0, typo.stderr
    assert "no worker has registered a pipeline 'slwo'" in typo.stderr and "slow" in typo.stderr
    assert (await sisas_async("limits", "clear", "slwo", env=env)).returncode == 0
    ran = await sisas_async("run", "slow", "--input", "-", env=env, input='{"seconds": 0}')
    assert ran.returncode == 0, ran.stderr
    assert "slow runs at most 1 at once" in ran.stdout and "sisas show slow-" in ran.stdout


def test_a_tag_limit_counts_runs_of_any_pipeline_and_releases_the_first_that_fits() -> None:
    limits = {"team=data": 1, "team=web": 1}
    state = AdmissionState()
    asks = [("a", ("team=data",)), ("b", ("team=data",)), ("c", ("team=web",))]
    for run_id, tags in asks:
        d = decide_tag_request(state, "p", run_id, tags, limits, priority=0, request_seq=1)
        assert d is not None
        state = evolve_admission(state, d)
    assert state.holders == ("a", "c")  # c's tag has room: it does not wait behind b
    [waiting] = state.waiting
    assert waiting.run_id == "b" and waiting.tags == ("team=data",)
    assert decide_tag_release(state, limits, ("c",)) is None  # web's slot frees no data slot
    freed = decide_tag_release(state, limits, ("a",))
    assert freed is not None and freed.run_id == "b"
    assert freed.reason.startswith("a ended: tag team=data: 0 of 1 runs hold a slot")


async def _tags_chain(bus: Bus) -> list[RunQueued | RunReleased | RunWithdrawn]:
    records = await bus.log.read_run(TAGS_CHAIN)
    return [r.signal.body for r in records if isinstance(r, StoredSignal)]  # type: ignore[misc]


async def _peak(bus: Bus, run_ids: list[str]) -> int:
    """The most of ``run_ids`` running at once, from the log (first phase_started to the
    last signal, in stream order)."""
    events = []
    for run_id in run_ids:
        records = [r for r in await bus.log.read_run(run_id) if isinstance(r, StoredSignal)]
        began = next(r.stream_seq for r in records if r.signal.kind == "phase_started")
        events += [(began, 1), (records[-1].stream_seq, -1)]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


async def test_a_tag_limit_holds_across_runs_and_under_a_pipeline_limit(
    admitting: Bus, settings: Settings
) -> None:
    bus = admitting
    env = server_env(settings)
    set_tag = await sisas_async("limits", "set", "--tag", "team=data", "2", "--json", env=env)
    assert set_tag.returncode == 0, set_tag.stderr
    assert json.loads(set_tag.stdout) == {"tag": "team=data", "limit": 2, "before": None}
    await set_limit(bus, "slow", 3)  # the pipeline's own limit applies first
    client = Client(bus)
    data = [
        await client.start("slow", {"seconds": 0.4}, seed=i, tags={"team": "data"})
        for i in range(5)
    ]
    data.append(await client.start("chain7", 1, seed=1, tags={"team": "data"}))  # any pipeline
    web = [await client.start("slow", {"seconds": 0.0}, seed=9, tags={"team": "web"})]
    for h in data + web:
        assert (await wait_end(bus, h.run_id))[0].status == "completed"
    assert await _peak(bus, [h.run_id for h in data]) <= 2  # measured from the log
    chain = await _tags_chain(bus)
    queued = [d for d in chain if isinstance(d, RunQueued)]
    assert queued and all(d.waits_for == "tag team=data" for d in queued)
    assert all("max_concurrent_runs = 2" in d.reason or "wait already" in d.reason for d in queued)
    released = {d.run_id for d in chain if isinstance(d, RunReleased)}
    assert released == {h.run_id for h in data}  # the web run never needed the tags' chain
    listed = await sisas_async("limits", "list", "--json", env=env)
    [row] = [r for r in json.loads(listed.stdout)["limits"] if r.get("tag") == "team=data"]
    assert (row["limit"], row["waiting"], row["chain"]) == (2, [], TAGS_CHAIN)
    cleared = await sisas_async("limits", "clear", "--tag", "team=data", env=env)
    assert cleared.returncode == 0, cleared.stderr
    again = await sisas_async("limits", "clear", "--tag", "team=data", env=env)
    assert again.returncode == 1 and "tag team=data has no limit" in again.stderr
    report = await verify_log(bus, None, projection=False)
    assert report.intact, [v.findings for v in report.verdicts if not v.intact]
