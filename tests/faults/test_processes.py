"""Fault injection on one server: workers, orchestrators and projectors killed at the
worst moments, orchestrators racing, reports twice and out of order.

Each case runs three times (three runs, or three kills) and prints its counts; every
run must end with the clean reference run's signals exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus
from sisas.client.queries import projector_listening
from sisas.signals.names import IN_PREFIX, INPUT_STREAM
from tests.conftest import NatsServer
from tests.runs import TEST_PIPES, start

from .harness import (
    Counts,
    Role,
    check_runs,
    check_whole_log,
    count_kind,
    env_for,
    reference,
    registered,
    report,
    signals_of,
    wait_all,
)

pytestmark = pytest.mark.timeout(300)
SLOW = b'{"seconds": 1.0}'


async def test_a_worker_sigkilled_mid_phase_again_and_again(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = env_for(nats_server.url, tmp_path / "home")
    roles = [Role(["orchestrator"], env, tmp_path).start(), Role(["projector"], env, tmp_path)]
    roles[1].start()
    worker = Role(["worker", "--pipelines", TEST_PIPES, "--ack-wait", "1"], env, tmp_path).start()
    try:
        await registered(bus, "slow")
        ref = await reference(bus, "slow", SLOW)
        counts = []
        for rep in range(3):
            c = Counts(f"worker SIGKILLed mid-phase #{rep + 1}")
            run_id = f"worker-kill-{rep}"
            await start(bus, "slow", run_id, SLOW)
            for k in range(2):  # two workers die mid-`nap`; the third finishes it
                while await count_kind(bus, run_id, "phase_started") < k + 1:
                    await asyncio.sleep(0.05)
                worker.kill()
                c.kills += 1
                worker.start()
            await wait_all(bus, [run_id])
            await check_runs(bus, [run_id], ref, c)
            assert c.takeovers == 2  # each takeover is in the log, naming the new worker
            counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts)
    finally:
        for role in [*roles, worker]:
            role.stop()


async def test_a_worker_beside_its_orchestrator_sigkilled_before_and_after_reporting(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    """The fast path (reports handed to the orchestrator in the same process, never on
    SISAS_IN): killed after a short phase ran but before its start and outcome were
    decided (they travel together), nothing of the attempt is in the log, and the work
    comes back and is done by the next process (no takeover to see: one start, one
    outcome); killed after the outcome's signals were appended but before the work was
    acknowledged, the work comes back and is dropped without running (the log says the
    attempt ended)."""
    env = env_for(nats_server.url, tmp_path / "home")
    projector = Role(["projector"], env, tmp_path).start()
    beside = Role([TEST_PIPES], env, tmp_path, module="tests.faults.beside").start()
    try:
        await registered(bus, "chain7")
        ref = await reference(bus, "chain7", b"1")
        counts = []
        cases = [("worker.before_report=3", 0), ("worker.before_ack=3", 0)]
        for rep, (point, takeovers) in enumerate([*cases, ("worker.before_report=5", 0)]):
            c = Counts(f"worker beside its orchestrator SIGKILLed around its report #{rep + 1}")
            c.notes.append(point)
            beside.stop()
            beside.start(failpoints=point)
            run_id = f"beside-kill-{rep}"
            await start(bus, "chain7", run_id, b"1")

            async def revive(c: Counts = c) -> None:
                if beside.died_by_kill():
                    c.kills += 1
                    beside.start()

            await wait_all(bus, [run_id], tick=revive)
            assert c.kills == 1
            await check_runs(bus, [run_id], ref, c)
            assert c.takeovers == takeovers
            counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts)
    finally:
        for role in (beside, projector):
            role.stop()


async def test_a_process_sigkilled_mid_phase_of_an_attempt_handed_over(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Eager dispatch: the orchestrator handed the attempt to the worker beside it (no
    offer on SISAS_WORK), which reported it started; the process is killed mid-phase.
    The run's input, held in progress as the attempt's lease, comes back to the next
    process; deciding it changes nothing, and as it was redelivered with nothing handed
    over there, the started attempt is offered again and finished: one takeover in the
    log, nothing lost or doubled."""
    env = env_for(nats_server.url, tmp_path / "home")
    projector = Role(["projector"], env, tmp_path).start()
    beside = Role([TEST_PIPES], env, tmp_path, module="tests.faults.beside").start()
    try:
        await registered(bus, "slow")
        ref = await reference(bus, "slow", SLOW)
        counts = []
        for rep in range(3):
            c = Counts(f"orchestrator and worker in one process SIGKILLed mid-phase #{rep + 1}")
            run_id = f"handed-kill-{rep}"
            await start(bus, "slow", run_id, SLOW)
            while await count_kind(bus, run_id, "phase_started") < 1:
                await asyncio.sleep(0.05)
            beside.kill()
            c.kills += 1
            beside.start()
            await wait_all(bus, [run_id])
            await check_runs(bus, [run_id], ref, c)
            assert c.takeovers == 1  # the attempt started again, by the next process
            counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts)
    finally:
        for role in (beside, projector):
            role.stop()


async def test_an_orchestrator_sigkilled_between_append_and_ack(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = env_for(nats_server.url, tmp_path / "home")
    orch = Role(["orchestrator"], env, tmp_path).start()
    others = [
        Role(["worker", "--pipelines", TEST_PIPES], env, tmp_path).start(),
        Role(["projector"], env, tmp_path).start(),
    ]
    try:
        await registered(bus, "chain7")
        ref = await reference(bus, "chain7", b"1")
        counts = []
        for rep in range(3):
            c = Counts(f"orchestrator SIGKILLed between append and ack #{rep + 1}")
            orch.stop()
            orch.start(failpoints="orchestrator.before_ack=3")
            run_id = f"orch-kill-{rep}"
            await start(bus, "chain7", run_id, b"1")

            async def revive(c: Counts = c) -> None:
                if orch.died_by_kill():  # the failpoint fired: signals appended, input not acked
                    c.kills += 1
                    orch.start(failpoints="orchestrator.before_ack=3" if c.kills < 3 else "")

            await wait_all(bus, [run_id], tick=revive)
            assert c.kills == 3
            await check_runs(bus, [run_id], ref, c)
            counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts)
    finally:
        for role in [orch, *others]:
            role.stop()


async def test_a_projector_sigkilled_mid_batch(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = env_for(nats_server.url, tmp_path / "home")
    roles = [
        Role(["orchestrator"], env, tmp_path).start(),
        Role(["worker", "--pipelines", TEST_PIPES], env, tmp_path).start(),
    ]
    projector = Role(["projector", "--batch-size", "7"], env, tmp_path)
    try:
        await registered(bus, "chain7")
        ref = await reference(bus, "chain7", b"1")
        counts = []
        for rep in range(3):
            c = Counts(f"projector SIGKILLed mid-batch #{rep + 1}")
            run_id = f"proj-kill-{rep}"
            await start(bus, "chain7", run_id, b"1")
            await wait_all(bus, [run_id])
            # Its first batch is written inside the transaction, then the process dies.
            projector.start(failpoints="projector.mid_batch=1")
            assert projector.proc is not None
            await asyncio.to_thread(projector.proc.wait, 60)
            assert projector.died_by_kill()
            c.kills += 1
            await check_runs(bus, [run_id], ref, c)
            counts.append(c)
        projector.start()
        # Until it answers, a CLI query would fold locally into the same DuckDB file.
        while not await projector_listening(bus):
            await asyncio.sleep(0.1)
        check_whole_log(env, counts[-1])  # the folded state equals a rebuild from the log
        report(counts)
    finally:
        for role in [*roles, projector]:
            role.stop()


async def test_two_orchestrators_race_and_a_worker_reports_twice_and_out_of_order(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = env_for(nats_server.url, tmp_path / "home")
    roles = [
        Role(["orchestrator"], env, tmp_path).start(),
        Role(["orchestrator"], env, tmp_path).start(),
        Role(["worker", "--pipelines", TEST_PIPES, "--concurrency", "4"], env, tmp_path).start(),
        Role(["projector"], env, tmp_path).start(),
    ]
    try:
        await registered(bus, "chain7")
        ref = await reference(bus, "chain7", b"1")
        counts = []
        for rep in range(3):
            c = Counts(f"two orchestrators racing, reports replayed #{rep + 1}")
            run_ids = [f"race-{rep}-{i}" for i in range(4)]
            for run_id in run_ids:
                await start(bus, "chain7", run_id, b"1")
            await wait_all(bus, run_ids)
            before = {r: len(await signals_of(bus, r)) for r in run_ids}
            # Every input of the first run again: each report twice, in reverse order
            # (completed before started), under new message ids so JetStream keeps them.
            replayed = await replay_inputs(bus, run_ids[0])
            c.notes.append(f"{replayed} inputs replayed in reverse")
            await inputs_drained(bus)
            after = {r: len(await signals_of(bus, r)) for r in run_ids}
            assert after == before  # nothing decided twice
            await check_runs(bus, run_ids, ref, c)
            counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts)
    finally:
        for role in roles:
            role.stop()


async def replay_inputs(bus: Bus, run_id: str) -> int:
    sub = await bus.js.subscribe(
        f"{IN_PREFIX}.*.{run_id}.>", stream=INPUT_STREAM, ordered_consumer=True
    )
    msgs = []
    try:
        while True:
            try:
                msgs.append(await sub.next_msg(timeout=1))
            except TimeoutError:
                break
    finally:
        await sub.unsubscribe()
    for i, msg in enumerate(reversed(msgs)):
        for copy in range(2):
            await bus.js.publish(
                msg.subject, msg.data, headers={"Nats-Msg-Id": f"again:{i}:{copy}"}
            )
    return len(msgs)


async def inputs_drained(bus: Bus) -> None:
    for _ in range(600):
        info = await bus.js.consumer_info(INPUT_STREAM, "orchestrator")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the orchestrators did not drain SISAS_IN")
