"""Provisioning, config safety, connection options and the embedded server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from sisas.bus.artifacts import JetStreamArtifacts, bytes_digest
from sisas.bus.embedded import EmbeddedServer, running_server
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.errors import (
    ArtifactNotFound,
    BusError,
    BusUnavailable,
    ServerAlreadyRunning,
    StoreWithoutStream,
    StreamDrift,
    UsageError,
)
from sisas.signals import StoredSignal
from tests.certs import make_tls
from tests.conftest import NatsServer, spawn_nats
from tests.log_contract import run_signals

# -- provisioning and drift ---------------------------------------------------------


async def test_the_log_stream_is_immutable_and_unlimited(bus: Bus) -> None:
    cfg = (await bus.js.stream_info("SISAS_LOG")).config
    assert cfg.subjects == ["sisas.run.>"]
    assert (cfg.deny_delete, cfg.deny_purge) == (True, True)
    assert cfg.discard == "new"
    assert cfg.storage == "file"
    assert (cfg.max_msgs, cfg.max_bytes, cfg.max_msgs_per_subject) == (-1, -1, -1)
    assert cfg.duplicate_window == 120.0
    assert (await bus.js.stream_info("SISAS_IN")).config.subjects == ["sisas.in.>"]
    assert "sisas-artifacts" in bus.provisioned.created


async def test_provisioning_twice_verifies_and_creates_nothing(settings: Settings) -> None:
    async with open_bus(settings) as first:
        await first.log.append(run_signals("r1", 2), expected_last_seq=0)
    async with open_bus(settings) as second:
        assert second.provisioned.created == []
        assert set(second.provisioned.verified) == {
            "SISAS_LOG",
            "SISAS_IN",
            "SISAS_WORK",
            "sisas-artifacts",
            "sisas-circuits",
            "sisas-pipelines",
            "sisas-blobs",
        }
        assert len(await second.log.read_run("r1")) == 2


async def test_a_limit_added_to_the_log_is_drift_and_sisas_refuses_to_run(
    settings: Settings,
) -> None:
    async with open_bus(settings) as bus:
        cfg = (await bus.js.stream_info("SISAS_LOG")).config
        cfg.max_msgs_per_subject = 1  # would silently delete history on the next append
        await bus.js.update_stream(cfg)
    with pytest.raises(StreamDrift, match="max_msgs_per_subject is 1, sisas requires -1"):
        async with open_bus(settings):
            pass


async def test_a_deleted_log_is_never_replaced_by_an_empty_one(settings: Settings) -> None:
    async with open_bus(settings) as bus:
        await bus.log.append(run_signals("r1", 2), expected_last_seq=0)
        await bus.js.delete_stream("SISAS_LOG")
    with pytest.raises(StoreWithoutStream, match="will not create an empty log"):
        async with open_bus(settings):
            pass
    async with open_bus(replace(settings, home=settings.home.parent / "other-home")) as fresh:
        # A data folder that never saw a log may create one (a new deployment).
        assert "SISAS_LOG" in fresh.provisioned.created


async def test_a_stream_owning_our_subjects_with_another_config_is_drift(
    nats_server: NatsServer, settings: Settings
) -> None:
    async with open_bus(replace(settings, home=settings.home.parent / "h0")) as bus:
        await bus.js.delete_stream("SISAS_IN")
        await bus.js.add_stream(
            StreamConfig(name="SISAS_IN", subjects=["sisas.in.>"], storage="memory")
        )  # type: ignore[arg-type]
    with pytest.raises(StreamDrift, match="storage"):
        async with open_bus(settings):
            pass


# -- connection ---------------------------------------------------------------------


async def test_an_unreachable_server_names_the_url_and_the_fix(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, nats_url="nats://127.0.0.1:1", timeout=1)
    with pytest.raises(BusUnavailable, match=r"nats://127\.0\.0\.1:1.*unset SISAS_NATS_URL"):
        async with open_bus(settings):
            pass


async def test_user_and_password_are_used_and_a_wrong_one_is_explained(tmp_path: Path) -> None:
    server = spawn_nats(tmp_path / "nats", "--user", "alice", "--pass", "s3cret")
    try:
        good = Settings(
            home=tmp_path / "h", nats_url=server.url, user="alice", password="s3cret", replicas=1
        )
        async with open_bus(good) as bus:
            await bus.log.append(run_signals("r1", 1), expected_last_seq=0)
        with pytest.raises(BusUnavailable, match="credentials"):
            async with open_bus(replace(good, password="wrong")):
                pass
    finally:
        server.stop()


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path / "tls")
    server = spawn_nats(tmp_path / "nats", "--tls", "--tlscert", str(cert), "--tlskey", str(key))
    try:
        url = server.url.replace("nats://", "tls://")
        settings = Settings(home=tmp_path / "h", nats_url=url, tls_ca=ca, replicas=1, timeout=1)
        async with open_bus(settings) as bus:
            await bus.log.append(run_signals("r1", 1), expected_last_seq=0)
            assert len(await bus.log.read_run("r1")) == 1
        with pytest.raises(BusUnavailable, match="SISAS_NATS_TLS_CA"):  # untrusted certificate
            async with open_bus(replace(settings, tls_ca=None)):
                pass
    finally:
        server.stop()


def test_settings_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="SISAS_REPLICAS"):
        Settings.from_env({"SISAS_REPLICAS": "three"})
    with pytest.raises(UsageError, match=r"SISAS_NATS_CREDS names .* not a file"):
        Settings.from_env({"SISAS_NATS_CREDS": str(tmp_path / "missing.creds")})
    with pytest.raises(UsageError, match="SISAS_SYNC"):
        Settings.from_env({"SISAS_SYNC": "sometimes"})
    s = Settings.from_env({"SISAS_NATS_URL": "nats://a:4222,nats://b:4222"})
    assert (s.embedded, s.replicas) == (False, 3)
    assert Settings.from_env({}).replicas == 1


# -- artifacts ----------------------------------------------------------------------


async def test_artifacts_are_stored_and_found_by_their_digest(bus: Bus) -> None:
    data = os.urandom(300_000)
    digest = await bus.artifacts.put(data)
    assert digest == bytes_digest(data)
    assert await bus.artifacts.put(data) == digest
    assert await bus.artifacts.get(digest) == data
    assert await bus.artifacts.exists(digest)
    missing = bytes_digest(b"never stored")
    assert not await bus.artifacts.exists(missing)
    with pytest.raises(ArtifactNotFound, match="no artifact"):
        await bus.artifacts.get(missing)


async def test_a_small_artifact_is_put_in_the_blobs_bucket_and_read_by_another_process(
    bus: Bus,
) -> None:
    data = b'{"small": true}'
    digest = await bus.artifacts.put(data)
    kv = await bus.js.key_value("sisas-blobs")
    assert (await kv.get(digest.removeprefix("sha256:"))).value == data  # durable there
    fresh = JetStreamArtifacts(bus.js, nc=bus.nc)  # nothing in its memory
    assert await fresh.get(digest) == data
    await fresh.close()


async def test_a_small_put_without_its_bucket_is_a_clear_error(bus: Bus) -> None:
    lost = JetStreamArtifacts(bus.js, blobs="no-such-bucket", nc=bus.nc, timeout=2.0)
    with pytest.raises(BusError, match=r"store artifact sha256:.*is the server reachable"):
        await lost.put(b"a phase's output")
    await lost.close()


# -- the embedded server ----------------------------------------------------------------


async def test_embedded_server_serves_one_folder_and_refuses_a_second(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with EmbeddedServer(home) as server:
        assert server.url.startswith("nats://127.0.0.1:")
        conf = (home / "nats-server.conf").read_text()
        assert "sync_interval: always" in conf
        assert 'listen: "127.0.0.1:-1"' in conf
        found = running_server(home)
        assert found is not None and found.url == server.url
        with pytest.raises(ServerAlreadyRunning, match="already served"):
            await EmbeddedServer(home).start()
        pid = server.pid
    assert running_server(home) is None
    assert not (home / "server.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_open_bus_spawns_when_needed_and_data_survives_restarts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    sigs = run_signals("r1", 3)
    async with open_bus(settings) as bus:
        assert bus.server is not None
        await bus.log.append(sigs, expected_last_seq=0)
    async with open_bus(settings) as bus:
        records = await bus.log.read_run("r1")
        assert [r.signal for r in records if isinstance(r, StoredSignal)] == sigs
        async with open_bus(settings) as nested:  # a second process finds the running one
            assert nested.server is None and nested.url == bus.url


async def test_a_store_that_lost_its_stream_is_reported_not_recreated(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    async with open_bus(settings) as bus:
        await bus.log.append(run_signals("r1", 2), expected_last_seq=0)
    shutil.rmtree(tmp_path / "home" / "nats" / "jetstream" / "$G" / "streams" / "SISAS_LOG")
    with pytest.raises(StoreWithoutStream, match="move the data folder aside"):
        async with open_bus(settings):
            pass


ORPHAN = """
import asyncio, sys
from pathlib import Path
from sisas.bus.embedded import EmbeddedServer
async def main():
    server = EmbeddedServer(Path(sys.argv[1]))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_a_server_orphaned_by_kill_9_keeps_the_folder_locked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN, str(home)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    nats_pid = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    try:
        found = running_server(home)
        assert found is not None and found.pid == nats_pid and found.owner == 0
        with pytest.raises(ServerAlreadyRunning):  # never a second server on one store
            await EmbeddedServer(home).start()
        async with open_bus(Settings(home=home)) as bus:  # but it is used
            assert bus.server is None
            await bus.log.append(run_signals("r1", 1), expected_last_seq=0)
    finally:
        os.kill(nats_pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while running_server(home) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert json.loads((home / "server.json").read_text())["pid"] == nats_pid  # stale, ignored
    assert running_server(home) is None
