"""Fault injection on the servers: the embedded nats-server SIGKILLed and restarted, the
stream leader of a three-node cluster SIGKILLed, a node cut off and brought back, and
the store running out of space while appending.

Each case runs three times and prints its counts (and, for the cluster, how long the log
had no leader and how long until the next signal was appended).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from sisas.bus.cluster import LocalCluster, free_port
from sisas.bus.embedded import EmbeddedServer, find_binary
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.errors import AppendFailed
from sisas.signals import ChainHead, Draft
from sisas.signals.names import LOG_STREAM
from tests.runs import TEST_PIPES, start

from .harness import (
    REPORTED,
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

pytestmark = pytest.mark.timeout(420)
SLOW = b'{"seconds": 1.0}'


def _client(url: str, tmp: Path, replicas: int = 1) -> Settings:
    return Settings(home=tmp / "client", nats_url=url, replicas=replicas, timeout=3.0)


async def test_the_embedded_server_sigkilled_and_restarted_during_runs(tmp_path: Path) -> None:
    home, port = tmp_path / "server", free_port()
    server = EmbeddedServer(home, port=port)  # sync_interval: always, as `sisas up` runs it
    await server.start()
    env = env_for(server.url, tmp_path / "home")
    roles = [
        Role(["orchestrator"], env, tmp_path).start(),
        Role(["worker", "--pipelines", TEST_PIPES, "--ack-wait", "2"], env, tmp_path).start(),
        Role(["projector"], env, tmp_path).start(),
    ]
    try:
        async with open_bus(_client(server.url, tmp_path)) as bus:
            await registered(bus, "slow")
            ref = await reference(bus, "slow", SLOW)
            counts = []
            for rep in range(3):
                c = Counts(f"embedded nats-server SIGKILLed mid-run #{rep + 1}")
                run_id = f"server-kill-{rep}"
                await start(bus, "slow", run_id, SLOW)
                while await count_kind(bus, run_id, "phase_started") < 1:
                    await asyncio.sleep(0.05)
                acked = await bus.log.last_seq()  # acknowledged before the crash
                os.kill(server.pid, signal.SIGKILL)
                await server.stop()  # reaps it, releases the data folder
                c.kills += 1
                await asyncio.sleep(0.5)
                server = EmbeddedServer(home, port=port)
                await server.start()
                await wait_all(bus, [run_id], timeout=120)
                assert await bus.log.last_seq() >= acked
                await check_runs(bus, [run_id], ref, c)  # every acknowledged signal survived
                counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts)
    finally:
        for role in roles:
            role.stop()
        await server.stop()


async def _leader(cluster: LocalCluster) -> str:
    nc = await cluster.connect()
    try:
        for _ in range(300):
            leader = await cluster.stream_leader(nc, LOG_STREAM)
            if leader:
                return leader
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    raise AssertionError(f"{LOG_STREAM} has no leader")


async def _recovery(
    bus: Bus, cluster: LocalCluster, dead: str, t0: float, before: int
) -> tuple[float, float]:
    """Seconds from the kill until a new leader answers, and until a new signal lands."""
    nc = await cluster.connect()
    elected = appended = 0.0
    try:
        while not (elected and appended):
            if not elected:
                leader = await cluster.stream_leader(nc, LOG_STREAM, timeout=0.5)
                if leader and leader != dead:
                    elected = time.monotonic() - t0
            if not appended and await _last_seq_retrying(bus) > before:
                appended = time.monotonic() - t0
            if time.monotonic() - t0 > 90:
                raise AssertionError(
                    f"the cluster did not recover within 90 s (new leader after {elected:.1f}s, "
                    f"signal appended after {appended:.1f}s; 0 = not yet)"
                )
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return elected, appended


async def _last_seq_retrying(bus: Bus) -> int:
    for _ in range(200):
        try:
            return await bus.log.last_seq()
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("the log never answered")


async def test_a_cluster_survives_its_leader_killed_and_a_node_cut_off(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, nodes=3)
    await asyncio.to_thread(cluster.start)
    await cluster.wait_jetstream()
    env = env_for(cluster.urls, tmp_path / "home", SISAS_REPLICAS="3")
    roles = [
        Role(["orchestrator"], env, tmp_path).start(),
        Role(["worker", "--pipelines", TEST_PIPES, "--concurrency", "3"], env, tmp_path).start(),
        Role(["projector"], env, tmp_path).start(),
    ]
    counts, elections, appends = [], [], []
    try:
        async with open_bus(_client(cluster.urls, tmp_path, replicas=3)) as bus:
            await registered(bus, "slow")
            ref = await reference(bus, "slow", SLOW)
            for rep in range(3):
                c = Counts(f"cluster stream leader SIGKILLed #{rep + 1}")
                run_ids = [f"leader-kill-{rep}-{i}" for i in range(3)]
                for run_id in run_ids:
                    await start(bus, "slow", run_id, SLOW)
                while await count_kind(bus, run_ids[0], "phase_started") < 1:
                    await asyncio.sleep(0.05)
                leader = await _leader(cluster)
                before = await bus.log.last_seq()
                t0 = time.monotonic()
                cluster.kill(leader)
                c.kills += 1
                elected, appended = await _recovery(bus, cluster, leader, t0, before)
                elections.append(elected)
                appends.append(appended)
                c.notes.append(
                    f"killed {leader}: new leader {elected:.1f}s, next signal {appended:.1f}s"
                )
                await wait_all(bus, run_ids, timeout=120)
                await asyncio.to_thread(cluster.restart, leader)
                await check_runs(bus, run_ids, ref, c)
                counts.append(c)
            for rep in range(3):
                c = Counts(f"cluster node cut off and brought back #{rep + 1}")
                run_ids = [f"cut-off-{rep}-{i}" for i in range(3)]
                for run_id in run_ids:
                    await start(bus, "slow", run_id, SLOW)
                victim = await _leader(cluster) if rep % 2 == 0 else "n3"
                cluster.cut_off(victim)  # SIGSTOP: silent to its peers and its clients
                await asyncio.sleep(4)
                cluster.reconnect(victim)
                c.notes.append(f"{victim} ({'leader' if rep % 2 == 0 else 'follower'}) cut off 4 s")
                await wait_all(bus, run_ids, timeout=120)
                await check_runs(bus, run_ids, ref, c)
                counts.append(c)
        check_whole_log(env, counts[-1])
        report(counts[:3])
        report(counts[3:])
        recovery = (
            f"leader kill: new leader after {statistics.median(elections):.1f}s (median of "
            f"{len(elections)}, max {max(elections):.1f}s); next signal appended after "
            f"{statistics.median(appends):.1f}s (max {max(appends):.1f}s)"
        )
        print(recovery)
        REPORTED.append(recovery)
    finally:
        for role in roles:
            role.stop()
        await asyncio.to_thread(cluster.stop)


class LimitedServer:
    """nats-server with ``max_file_store`` set, restartable on one port and store."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self, limit: int) -> None:
        conf = self.tmp / "limited.conf"
        conf.write_text(
            f'listen: "127.0.0.1:{self.port}"\nmax_payload: 8MB\n'
            f"jetstream {{ store_dir: {json.dumps(str(self.tmp / 'store'))}, "
            f"max_file_store: {limit}, sync_interval: always }}\n"
        )
        log = self.tmp / "limited.log"
        log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [str(find_binary()), "-c", str(conf), "-l", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(400):
            if log.exists() and "Server is ready" in log.read_text(errors="replace"):
                return
            time.sleep(0.02)
        raise AssertionError("the limited server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


async def _used(bus: Bus) -> int:
    for _ in range(100):  # after a restart, the client reconnects within a second or two
        try:
            reply = await bus.nc.request("$JS.API.INFO", b"", timeout=1)
            return int(json.loads(reply.data)["storage"])
        except Exception:
            await asyncio.sleep(0.1)
    raise AssertionError("the server never answered")


async def _fill(bus: Bus) -> int:
    """Publish 4 KiB messages to a FILLER stream until the server refuses; KiB stored."""
    with contextlib.suppress(Exception):
        await bus.js.add_stream(name="FILLER", subjects=["filler.>"])
    blob = b"x" * 4096
    for i in range(1_000_000):
        try:
            await bus.js.publish("filler.x", blob, timeout=2)
        except Exception:
            return i * 4
    raise AssertionError("the store never filled")


async def test_a_full_store_is_a_clear_error_and_nothing_is_corrupted(tmp_path: Path) -> None:
    server = LimitedServer(tmp_path)
    server.start(limit=256 * 1024 * 1024)
    env = env_for(server.url, tmp_path / "home")
    roles = [
        Role(["orchestrator"], env, tmp_path).start(),
        Role(["worker", "--pipelines", TEST_PIPES], env, tmp_path).start(),
        Role(["projector"], env, tmp_path).start(),
    ]
    counts = []
    try:
        async with open_bus(_client(server.url, tmp_path)) as bus:
            await registered(bus, "slow")
            ref = await reference(bus, "slow", SLOW)
            for rep in range(3):
                c = Counts(f"store full while appending #{rep + 1}")
                used = await _used(bus)
                server.stop()
                server.start(limit=used + 1024 * 1024)  # one more MiB, then full
                await _used(bus)  # reconnected
                run_id = f"disk-full-{rep}"
                await start(bus, "slow", run_id, SLOW)
                while await count_kind(bus, run_id, "phase_started") < 1:
                    await asyncio.sleep(0.05)
                # Fill what is left with bytes outside the log until the server refuses.
                filled = await _fill(bus)
                # An append now: a new run's first signal (a copy of the reference's).
                head = ChainHead(pipeline="slow", run_id=f"probe-{rep}")
                probe, _ = head.extend([Draft(body=ref[0].body, at=ref[0].at)])
                with pytest.raises(AppendFailed) as refused:
                    await bus.log.append(probe, expected_last_seq=0)
                error = str(refused.value)
                assert "no storage left" in error and "max_file_store" in error, error
                c.notes.append(f"full after {filled} KiB more: {error[:70]}...")
                await asyncio.sleep(2.5)  # the run's phase ends while the store is full
                stalled = (await signals_of(bus, run_id))[-1].kind != "run_completed"
                c.notes.append("the run waited for space" if stalled else "the run squeezed in")
                server.stop()
                server.start(limit=256 * 1024 * 1024)  # space returns
                await _used(bus)
                await bus.js.purge_stream("FILLER")
                await wait_all(bus, [run_id], timeout=120)
                await check_runs(bus, [run_id], ref, c)
                assert await bus.log.read_run(f"probe-{rep}") == []  # refused: not half-written
                await bus.log.append(probe, expected_last_seq=0)  # the same append, now stored
                assert [s.signal for s in await bus.log.read_run(f"probe-{rep}")] == probe
                counts.append(c)
        check_whole_log(env, counts[-1])  # the whole log verifies, probes included
        report(counts)
    finally:
        for role in roles:
            role.stop()
        server.stop()
