"""Shared fixtures: a real nats-server per test (port chosen by the server, temp store)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sisas.bus.embedded import find_binary
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class NatsServer:
    url: str
    pid: int
    store: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGTERM by PID (a clean JetStream shutdown), SIGKILL if it hangs; reaped."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()


def spawn_nats(tmp: Path, *extra: str) -> NatsServer:
    """Start nats-server on 127.0.0.1, a free port, JetStream in ``tmp/store``."""
    tmp.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(find_binary()),
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-js",
            "-sd",
            str(tmp / "store"),
            "--ports_file_dir",
            str(tmp),
            "-l",
            str(tmp / "nats.log"),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ports = tmp / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + 20
    while True:
        log = (tmp / "nats.log").read_text() if (tmp / "nats.log").exists() else ""
        if ports.exists() and "Server is ready" in log:
            try:  # the server may be halfway through writing the file
                url = json.loads(ports.read_text())["nats"][0]
            except (ValueError, KeyError, IndexError):
                url = ""
            if url:
                return NatsServer(url=url, pid=proc.pid, store=tmp / "store", proc=proc)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"nats-server did not start: {log[-500:]}")
        time.sleep(0.01)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for one test, stopped by PID afterwards."""
    server = spawn_nats(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(nats_server: NatsServer, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", nats_url=nats_server.url, replicas=1, timeout=5.0)


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    async with open_bus(settings) as b:
        yield b


from tests.browser import browser  # noqa: E402, F401 - a fixture, for every test module
