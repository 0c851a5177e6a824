"""Runs over JetStream: orchestrators and workers as they run in production."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sisas.bus.inputs import publish_input
from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.handlers.state import RunState
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.services.orchestrator import REJECTED_SUBJECT, Orchestrator
from sisas.services.worker import Worker
from sisas.signals import Signal, StoredSignal, encode_signal
from sisas.signals.inputs import CancelRun
from tests.cli_process import SISAS, server_env
from tests.runs import (
    EXAMPLE,
    POINTS,
    TEST_PIPES,
    local_fingerprint,
    start,
    validator,
    wait_end,
)


@pytest.fixture
async def services(bus: Bus) -> AsyncIterator[Bus]:
    pipes = load_pipelines([EXAMPLE, TEST_PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=3):
        yield bus


async def test_a_distributed_run_equals_the_in_process_reference(services: Bus) -> None:
    await start(services, "clustering", "r1", POINTS, seed=7, **{"clean.flaky": True})
    state, signals = await wait_end(services, "r1")
    assert state.status == "completed"
    assert state.fingerprint == local_fingerprint(7, **{"clean.flaky": True})
    assert state.phase("cluster").status == "completed"  # ran in a child process (timeout)
    for s in signals:
        assert validator(s.kind).is_valid(json.loads(encode_signal(s))), s.kind


async def test_garbage_on_the_input_subjects_is_rejected_and_the_next_command_runs(
    services: Bus,
) -> None:
    rejected = await services.nc.subscribe(REJECTED_SUBJECT)
    await services.js.publish("sisas.in.clustering.r1.start_run", b"\x00garbage")
    await services.js.publish("sisas.in.clustering.r1.start_run", b'{"kind": "start_run"}')
    await start(services, "clustering", "r2", POINTS)
    state, _ = await wait_end(services, "r2")
    assert state.status == "completed"
    reasons = []
    for _ in range(2):
        msg = await rejected.next_msg(timeout=10)
        reasons.append(json.loads(msg.data)["reason"])
    assert "not JSON" in reasons[0]
    assert "not a valid sisas input" in reasons[1]
    assert await services.log.last_of_run("r1") is None


async def test_an_unknown_pipeline_fails_the_run_with_the_fix(services: Bus) -> None:
    await start(services, "nosuch", "r3", b"null")
    state, _ = await wait_end(services, "r3")
    assert state.status == "failed"
    assert state.error is not None and "not registered" in state.error.message


async def test_cancel_stops_a_run(services: Bus) -> None:
    await start(services, "slow", "r4", json.dumps({"seconds": 1.0}).encode())
    await asyncio.sleep(0.3)
    await publish_input(
        services.js,
        CancelRun(
            id="cancel:r4", pipeline="slow", run_id="r4", at=datetime.now(UTC), reason="test"
        ),
    )
    state, signals = await wait_end(services, "r4")
    assert state.status == "cancelled"
    await asyncio.sleep(1.5)  # the phase finishes; its report changes nothing
    assert len(await services.log.read_run("r4")) == len(signals)


async def test_a_phase_that_ignores_its_timeout_is_killed_and_retried(services: Bus) -> None:
    await start(services, "limits", "r5", b'"hang"')
    state, signals = await wait_end(services, "r5")
    assert state.status == "failed"
    assert [s.kind for s in signals if s.kind == "phase_timed_out"] == ["phase_timed_out"] * 2
    assert state.error is not None and state.error.kind == "Timeout"


async def test_a_phase_past_its_memory_limit_is_killed(services: Bus) -> None:
    await start(services, "limits", "r6", b'"eat"')
    state, _ = await wait_end(services, "r6")
    assert state.status == "failed"
    assert state.failed_phase == "hungry"
    assert state.error is not None and state.error.kind == "ResourceExhausted"


async def test_two_orchestrators_and_three_workers_agree_with_one(
    bus: Bus, settings: Settings
) -> None:
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    stop = asyncio.Event()
    async with open_bus(settings) as bus2, open_bus(settings) as bus3:
        await Worker(bus, pipes).register()  # the plan is there before the first start
        tasks = [asyncio.create_task(Orchestrator(b).run(stop)) for b in (bus, bus2)]
        tasks += [
            asyncio.create_task(Worker(b, pipes, name=f"w{i}", concurrency=2).run(stop))
            for i, b in enumerate((bus, bus2, bus3))
        ]
        for i in range(4):
            await start(bus, "clustering", f"p{i}", POINTS, seed=7)
        states = [(await wait_end(bus, f"p{i}"))[0] for i in range(4)]
        stop.set()
        await asyncio.gather(*tasks)
    assert {s.status for s in states} == {"completed"}
    assert {s.fingerprint for s in states} == {local_fingerprint(7)}
    workers = {s.worker for st in states for s in st.phases.values() if s.worker}
    assert len(workers) >= 2


WORKER = [*SISAS, "worker", "--pipelines", TEST_PIPES, "--ack-wait", "2", "--concurrency", "1"]


async def test_a_worker_killed_mid_phase_loses_nothing_and_completes_once(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    env = server_env(settings)
    async with running_services(bus, {}):  # an orchestrator only
        first = subprocess.Popen(
            [*WORKER, "--name", "doomed"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            registry = PlanRegistry(bus.js)
            deadline = time.monotonic() + 30
            while await registry.get("slow") is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            marker = tmp_path / "markers"
            marker.mkdir()
            await start(
                bus, "slow", "k1", json.dumps({"seconds": 1.5, "marker_dir": str(marker)}).encode()
            )
            deadline = time.monotonic() + 30
            while not list(marker.iterdir()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert list(marker.iterdir()), "the phase never started"
            while time.monotonic() < deadline:  # its start recorded (it runs past 50 ms)
                last = await bus.log.last_of_run("k1")
                if isinstance(last, StoredSignal) and last.signal.kind == "phase_started":
                    break
                await asyncio.sleep(0.02)
            first.send_signal(signal.SIGKILL)  # mid-phase
            first.wait()
            second = subprocess.Popen(
                [*WORKER, "--name", "rescuer"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                state, signals = await wait_end(bus, "k1", timeout=60)
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert state.status == "completed"
    nap = [(s.kind, getattr(s.body, "worker", "")) for s in signals if s.phase == "nap"]
    assert nap.count(("phase_completed", "rescuer")) == 1
    assert [k for k, _ in nap].count("phase_completed") == 1
    assert ("phase_started", "doomed") in nap
    assert ("phase_started", "rescuer") in nap


class CrashAfterAppend(Orchestrator):
    """Appends its decisions, then dies before acknowledging a `completed` report."""

    crashed = False

    async def handle(self, msg) -> None:  # type: ignore[no-untyped-def]
        if self.crashed:
            await asyncio.sleep(3600)  # a dead process acknowledges nothing
        if b'"status":"completed"' in msg.data:
            from sisas.signals.inputs import decode_input

            await self.apply(decode_input(msg.data))
            self.crashed = True
            return
        await super().handle(msg)


async def test_an_orchestrator_dying_between_append_and_ack_changes_nothing(bus: Bus) -> None:
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    stop_first, stop_rest = asyncio.Event(), asyncio.Event()
    doomed = CrashAfterAppend(bus, ack_wait=1.0)
    worker = Worker(bus, pipes, concurrency=1)
    await worker.register()
    tasks = [
        asyncio.create_task(doomed.run(stop_first)),
        asyncio.create_task(worker.run(stop_rest)),
    ]
    await start(bus, "slow", "o1", json.dumps({"seconds": 0.1}).encode())
    deadline = time.monotonic() + 30
    while not doomed.crashed and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert doomed.crashed
    before = len(await bus.log.read_run("o1"))
    tasks.append(asyncio.create_task(Orchestrator(bus, ack_wait=1.0).run(stop_rest)))
    state, signals = await wait_end(bus, "o1", timeout=60)
    stop_first.set()
    stop_rest.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert state.status == "completed"
    assert before >= 5
    nap = [s.kind for s in signals if s.phase == "nap"]
    assert nap.count("phase_completed") == 1
    assert len({s.id for s in signals}) == len(signals)


ORCH = [*SISAS, "orchestrator"]


async def test_an_orchestrator_killed_mid_run_is_replaced_and_the_run_completes(
    bus: Bus, settings: Settings
) -> None:
    env = server_env(settings)
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    stop = asyncio.Event()
    worker = Worker(bus, pipes, concurrency=2)
    await worker.register()
    wtask = asyncio.create_task(worker.run(stop))
    first = subprocess.Popen(ORCH, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i in range(3):
            await start(bus, "slow", f"m{i}", json.dumps({"seconds": 0.4}).encode())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            last = await bus.log.last_of_run("m2")
            if isinstance(last, StoredSignal) and last.signal.kind == "phase_started":
                break
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = subprocess.Popen(
            ORCH, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            results = [await wait_end(bus, f"m{i}", timeout=90) for i in range(3)]
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        stop.set()
        await asyncio.wait_for(wtask, 30)
    for state, signals in results:
        assert state.status == "completed"
        assert [s.kind for s in signals if s.phase == "nap"].count("phase_completed") == 1
        assert len({s.id for s in signals}) == len(signals)


async def test_circuit_breakers_are_shared_by_runs_through_the_bus(services: Bus) -> None:
    for run_id in ("cb1", "cb2"):
        await start(services, "breaker", run_id, b'"bad"')
        state, _ = await wait_end(services, run_id)
        assert state.status == "failed"
    _, second = await wait_end(services, "cb2")
    assert [s.kind for s in second].count("circuit_opened") == 1
    await start(services, "breaker", "cb3", b'"good"')
    state, third = await wait_end(services, "cb3")
    assert state.status == "completed"
    held = next(s.body for s in third if s.kind == "phase_scheduled")
    assert 0 < held.delay <= 1.0  # type: ignore[union-attr]
    assert "circuit_closed" in [s.kind for s in third]


async def inputs_of(bus: Bus, run_id: str) -> list[str]:
    """The kinds of the inputs of ``run_id`` on SISAS_IN."""
    sub = await bus.js.subscribe(f"sisas.in.*.{run_id}.>", ordered_consumer=True)
    kinds = []
    try:
        while True:
            try:
                kinds.append((await sub.next_msg(timeout=0.5)).subject.rsplit(".", 1)[-1])
            except TimeoutError:
                return kinds
    finally:
        await sub.unsubscribe()


async def one_run(bus: Bus, run_id: str, *, beside: bool) -> tuple[RunState, list[Signal], int]:
    """A chain7 run by an orchestrator and a worker here, the worker handing its reports
    to the orchestrator (``beside``) or publishing them; with what the orchestrator
    decided without SISAS_IN."""
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    stop = asyncio.Event()
    orchestrator = Orchestrator(bus)
    worker = Worker(bus, pipes, name="w", concurrency=1, local=orchestrator if beside else None)
    await worker.register()  # as running_services does: the plan is there before the start
    tasks = [asyncio.create_task(orchestrator.run(stop)), asyncio.create_task(worker.run(stop))]
    await start(bus, "chain7", run_id, b"1")
    state, signals = await wait_end(bus, run_id)
    stop.set()
    await asyncio.gather(*tasks)
    return state, signals, orchestrator.handled_locally


async def test_a_worker_beside_its_orchestrator_records_the_same_log_without_sisas_in(
    bus: Bus,
) -> None:
    fast, fast_signals, local = await one_run(bus, "beside", beside=True)
    slow, slow_signals, none = await one_run(bus, "apart", beside=False)
    assert fast.status == slow.status == "completed"
    assert fast.fingerprint == slow.fingerprint
    assert (local, none) == (14, 0)  # started and completed of each of the 7 phases

    def shape(signals: list[Signal]) -> list[tuple[object, ...]]:
        # Everything but the times (the reports' clocks) and what names the run.
        return [
            (s.seq, s.kind, s.phase, s.attempt, getattr(s.body, "output_digest", None))
            for s in signals
        ]

    assert shape(fast_signals) == shape(slow_signals)
    assert await inputs_of(bus, "beside") == ["start_run"]  # no report crossed SISAS_IN
    assert (await inputs_of(bus, "apart")).count("phase_report") == 14


async def test_two_orchestrators_one_with_a_worker_beside_it_agree_with_one(
    bus: Bus, settings: Settings
) -> None:
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    stop = asyncio.Event()
    async with open_bus(settings) as bus2:
        await Worker(bus, pipes).register()  # the plan is there before the first start
        near = Orchestrator(bus)
        tasks = [asyncio.create_task(o.run(stop)) for o in (near, Orchestrator(bus2))]
        tasks += [
            asyncio.create_task(Worker(bus, pipes, name="near", local=near).run(stop)),
            asyncio.create_task(Worker(bus2, pipes, name="far").run(stop)),
        ]
        for i in range(4):
            await start(bus, "clustering", f"b{i}", POINTS, seed=7)
        states = [(await wait_end(bus, f"b{i}"))[0] for i in range(4)]
        stop.set()
        await asyncio.gather(*tasks)
    assert {s.status for s in states} == {"completed"}
    assert {s.fingerprint for s in states} == {local_fingerprint(7)}
    assert near.handled_locally > 0


async def test_a_run_stopped_under_log_format_1_goes_on_after_the_upgrade(bus: Bus) -> None:
    """Before commits, workers took phase_scheduled signals from the log through one
    durable consumer per pipeline. A run stopped mid-way then (p0 done, p1 scheduled)
    has work no input re-offers: the orchestrator adopts it at start, and the run ends
    in commits, its chain going on from the format-1 messages."""
    from nats.js.api import AckPolicy, ConsumerConfig
    from nats.js.errors import NotFoundError

    from sisas.handlers.local import LocalRun
    from sisas.signals.names import log_subject
    from tests.pipelines import chain

    old = LocalRun(chain, "old-1", at=datetime.now(UTC), clock=time.perf_counter)
    old.start(b"1", seed=7)
    old.work(old.pending_work()[0])  # p0 ran; p1 is scheduled, never taken
    assert [s.kind for s in old.signals][-1] == "phase_scheduled"
    for digest, data in old.artifacts.items():
        assert await bus.artifacts.put(data) == digest
    for s in old.signals:  # one signal per message, on its kind's subject
        subject = log_subject(s.pipeline, s.run_id, s.phase, s.kind)
        await bus.js.publish(subject, encode_signal(s), headers={"Nats-Msg-Id": s.id})
    await bus.js.add_consumer(
        "SISAS_LOG",
        ConsumerConfig(
            durable_name="worker-chain7",
            filter_subject="sisas.run.chain7.*.*.phase_scheduled",
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    await Worker(bus, {"chain7": chain}).register()
    async with running_services(bus, {"chain7": chain}):
        state, signals = await wait_end(bus, "old-1")
    assert state.status == "completed"
    assert signals[: len(old.signals)] == old.signals
    records = await bus.log.read_run("old-1")
    assert [r.of for r in records[: len(old.signals)]] == [1] * len(old.signals)
    assert any(isinstance(r, StoredSignal) and r.of > 1 for r in records)  # then commits
    with pytest.raises(NotFoundError):
        await bus.js.consumer_info("SISAS_LOG", "worker-chain7")
