"""The services' own code on the in-memory ports (:func:`sisas.bus.memory.memory_ports`):
an orchestrator and a worker decide and run pipelines with no server, and the in-memory
queues keep the delivery contract the services rely on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from sisas.bus.memory import MemoryInputs, MemoryQueue, memory_ports
from sisas.bus.ports import Ports
from sisas.client import Client
from sisas.errors import UsageError
from sisas.handlers.attempt_log import HEAD, TAIL
from sisas.loader import load_pipelines
from sisas.pipeline import Context, Pipeline
from sisas.replay.evidence import artifact_uses
from sisas.services.orchestrator import Orchestrator
from sisas.services.worker import Worker
from sisas.signals import StoredSignal
from sisas.signals.digest import bytes_digest
from sisas.signals.inputs import CancelRun, StartRun
from sisas.signals.kinds import PhaseScheduled
from tests.pipelines import slow, traced
from tests.runs import EXAMPLE, POINTS, TEST_PIPES, local_fingerprint, wait_end

AT = datetime(2026, 1, 1, tzinfo=UTC)


@contextlib.asynccontextmanager
async def services(
    ports: Ports, pipes: dict[str, Pipeline], *, local: bool = True
) -> AsyncIterator[Orchestrator]:
    """An orchestrator and a worker on ``ports`` until the block ends."""
    orch = Orchestrator(ports)
    worker = Worker(ports, pipes, concurrency=2, local=orch if local else None)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(orch.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        yield orch
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def start(ports: Ports, pipeline: str, run_id: str, data: bytes, seed: int = 7) -> None:
    await ports.artifacts.put(data)
    await ports.inputs.publish(
        StartRun(
            id=f"start:{run_id}",
            pipeline=pipeline,
            run_id=run_id,
            at=AT,
            seed=seed,
            input_digest=bytes_digest(data),
        )
    )


@pytest.mark.parametrize("local", [True, False], ids=["reports-in-process", "reports-queued"])
async def test_the_example_runs_on_memory_ports_as_it_runs_in_process(local: bool) -> None:
    ports = memory_ports()
    pipe = load_pipelines([EXAMPLE], entry_points=False)["clustering"]
    async with services(ports, {"clustering": pipe}, local=local) as orch:
        await start(ports, "clustering", "m1", POINTS)
        state, signals = await wait_end(ports, "m1", timeout=60)
    assert state.status == "completed", state
    assert state.fingerprint == local_fingerprint()
    assert orch.rejected == 0
    assert (orch.handled_locally > 0) == local
    # one commit per decision: fewer messages than signals
    assert await ports.log.last_seq() < len(signals)
    # Eager dispatch: with the worker beside it the orchestrator hands it the work it
    # commits while a slot is free; a fan-out wider than the slots goes to the queue.
    work = ports.work.queue.messages  # type: ignore[attr-defined]
    scheduled = sum(isinstance(s.body, PhaseScheduled) for s in signals)
    if local:
        assert orch.handed_over > 0 and orch.handed_over + len(work) == scheduled
    else:
        assert orch.handed_over == 0 and len(work) == scheduled


async def test_retries_and_fan_out_on_memory_ports() -> None:
    ports = memory_ports()
    async with services(ports, {"traced": traced}):
        await start(ports, "traced", "t1", b'{"n": 3}')
        state, signals = await wait_end(ports, "t1", timeout=60)
    assert state.status == "completed", state
    attempts = sorted(
        (s.phase, s.attempt, s.body.item) for s in signals if isinstance(s.body, PhaseScheduled)
    )
    assert attempts == [
        ("shaky", 0, None),
        ("shaky", 1, None),
        ("spread", 0, None),
        ("square", 0, 0),
        ("square", 0, 1),
        ("square", 0, 2),
        ("total", 0, None),
    ]


async def test_a_bad_input_is_recorded_and_the_orchestrator_goes_on() -> None:
    ports = memory_ports()
    assert isinstance(ports.inputs, MemoryInputs)
    ports.inputs.queue.put("sisas.in.traced.x1.start_run", b"{not json", {}, "junk")
    async with services(ports, {"traced": traced}) as orch:
        await start(ports, "traced", "t2", b'{"n": 1}')
        state, _ = await wait_end(ports, "t2", timeout=60)
    assert state.status == "completed"
    (rejection,) = ports.inputs.rejections()
    assert rejection["stream_seq"] == 1 and "x1" in str(rejection["subject"])
    assert orch.rejected == 1


async def test_cancel_stops_a_running_attempt_on_memory_ports() -> None:
    ports = memory_ports()
    async with services(ports, {"slow": slow}):
        await start(ports, "slow", "s1", b'{"seconds": 30}')
        for _ in range(400):  # until the attempt runs
            last = await ports.log.last_of_run("s1")
            if isinstance(last, StoredSignal) and last.signal.kind == "phase_started":
                break
            await asyncio.sleep(0.05)
        await ports.inputs.publish(
            CancelRun(id="cancel:s1", pipeline="slow", run_id="s1", at=AT, reason="test")
        )
        state, signals = await wait_end(ports, "s1", timeout=20)
    assert state.status == "cancelled"
    assert signals[-1].kind == "run_cancelled"


async def test_memory_queue_delivers_each_message_to_one_taker_until_settled() -> None:
    queue = MemoryQueue()
    for i in range(3):
        queue.put(f"sisas.in.p.r{i}.start_run", b"x", {}, f"id{i}")
    assert queue.put("sisas.in.p.r0.start_run", b"x", {}, "id0").duplicate
    a = queue.consumer("orchestrator", "sisas.in.", ack_wait=0.2)
    assert queue.consumer("orchestrator", "sisas.in.", ack_wait=0.2) is a  # shared
    first = await a.fetch(2, timeout=0.1)
    assert [m.metadata.sequence.stream for m in first] == [1, 2]
    await first[0].ack()
    await first[1].nak()
    (again,) = await a.fetch(1, timeout=0.1)  # a nak'd message comes back first
    assert again.metadata.sequence.stream == 2 and again.metadata.num_delivered == 2
    await again.term()
    (third,) = await a.fetch(5, timeout=0.1)
    assert third.metadata.sequence.stream == 3
    # not settled within ack_wait: delivered again
    (redelivered,) = await a.fetch(1, timeout=1.0)
    assert redelivered.metadata.sequence.stream == 3
    await redelivered.ack()
    with pytest.raises(TimeoutError):
        await a.fetch(1, timeout=0.05)


async def test_the_client_starts_follows_and_cancels_runs_on_memory_ports() -> None:
    ports = memory_ports()
    client = Client(ports, requested_by="tests")
    async with services(ports, {"traced": traced, "slow": slow}):
        for _ in range(100):  # the worker registers its plans as it starts
            if await ports.plans.get("slow"):
                break
            await asyncio.sleep(0.02)
        started = await client.start("traced", input={"n": 4}, seed=3)
        result = await started.result(timeout=30)
        assert result.status == "completed"
        assert await client.output(started.run_id, "total") == 16 + 25 + 36
        again = await client.start("traced", input={"n": 4}, seed=3, idempotency_key="k1")
        same = await client.start("traced", input={"n": 4}, seed=3, idempotency_key="k1")
        assert same.run_id == again.run_id
        long = await client.start("slow", input={"seconds": 30})
        await asyncio.sleep(0.3)
        assert await client.cancel(long.run_id, "enough")
        ended = await long.result(timeout=20, check=False)
        assert ended.status == "cancelled"
    with pytest.raises(UsageError, match="in-memory ports"):
        await client.runs()


async def test_each_attempts_log_is_kept_by_digest_and_named_by_its_outcome() -> None:
    """ctx.log at INFO and above, print, a traceback; head and tail kept past the limit;
    an isolated attempt killed past its timeout keeps what it logged before."""
    ports = memory_ports()
    chatty = load_pipelines([TEST_PIPES], entry_points=False)["chatty"]
    client = Client(ports, requested_by="tests")
    async with services(ports, {"chatty": chatty}):
        await start(ports, "chatty", "c1", b'{"rows": 3, "lines": 1200}')
        state, signals = await wait_end(ports, "c1", timeout=60)
    assert state.status == "failed" and state.failed_phase == "hang"
    entries = await client.logs("c1")
    assert [(e.where, e.status) for e in entries] == [
        ("talk attempt 0", "failed"),
        ("talk attempt 1", "completed"),
        ("hang attempt 0", "timed_out"),
    ]
    first, second, hung = entries
    assert "INFO reading 3 rows" in first.text
    assert "stdout printed by attempt 0" in first.text
    assert "not kept" not in first.text  # DEBUG
    assert "RuntimeError: the first attempt fails on purpose" in first.text  # traceback
    assert second.lines == 2 + 1200 and second.dropped == second.lines - HEAD - TAIL
    kept = second.text.splitlines()
    assert len(kept) == HEAD + TAIL + 1 and "lines dropped" in kept[HEAD]
    assert kept[-1].endswith("INFO line 1199")
    assert "WARNING about to hang with 3 rows" in hung.text
    assert "stdout last words on stdout" in hung.text
    assert "stderr about to hang" not in hung.text  # a logged record is kept once
    assert "killed after its timeout" in hung.text
    # The logs are evidence: named by their signals, checked by digest, in the bundle.
    uses = artifact_uses(signals)
    assert {e.log for e in entries} <= set(uses)
    assert await client.logs("c1", "hang") == [hung]
    with pytest.raises(UsageError, match="no phase 'nope'"):
        await client.logs("c1", "nope")


async def test_served_in_memory_gives_a_client_on_the_real_services() -> None:
    from sisas.testing import served_in_memory

    chatty = load_pipelines([TEST_PIPES], entry_points=False)["chatty"]
    async with served_in_memory(chatty, traced) as client:  # plans registered already
        handle = await client.start("traced", {"n": 2})
        assert (await handle.result(timeout=30)).status == "completed"
        talk = await client.start("chatty", {"rows": 0, "lines": 1})
        await talk.result(timeout=30)
        (first, second) = await client.logs(talk.run_id, "talk")
        assert "stdout printed by attempt 0" in first.text and second.status == "completed"


async def test_a_phase_scheduled_beside_a_fan_out_does_not_wait_behind_its_items() -> None:

    pipe = Pipeline("beside", version="1")

    @pipe.phase()
    def load(ctx: Context, input: int) -> list[int]:
        return list(range(input))

    @pipe.phase(map_over="load")
    def each(ctx: Context, item: int) -> int:
        return item

    @pipe.phase()
    def aside(ctx: Context, load: list[int]) -> int:
        return len(load)

    ports = memory_ports()
    async with services(ports, {"beside": pipe}):
        await start(ports, "beside", "b1", b"200")
        state, signals = await wait_end(ports, "b1", timeout=60)
    assert state.status == "completed"
    started = [s.phase for s in signals if s.kind == "phase_started"]
    assert started.index("aside") <= 2, started[:5]  # among the first taken, not the 202nd
