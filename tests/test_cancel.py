"""`sisas cancel` stops running attempts: a child process is killed, a phase in a thread
sees ctx.cancelled; the run settles with every phase final; `run --wait` exits at once
with the recorded duration, and never hangs on a phase that ignores the cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.cli.render import duration_text
from sisas.client import Client
from sisas.errors import RunCancelledError
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from tests.cli_process import SISAS, server_env, sisas_async

CODE = str(Path(__file__).parent / "cancel_pipelines.py")
ROOT = Path(__file__).parent.parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(check: object, what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout}s")


async def test_cancel_stops_running_attempts_and_settles_every_phase(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    pipes = load_pipelines([CODE], entry_points=False)
    client = Client(bus)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        handle = await client.start("sleepy", {"marker_dir": str(tmp_path)})
        pid_file = tmp_path / "isolated-pid"
        await until(pid_file.exists, "the isolated phase starting")
        started = set()
        async for s in handle.signals():
            if s.kind == "phase_started":
                started.add(s.phase)
            if started >= {"polite", "isolated"}:
                break
        pid = int(pid_file.read_text())
        assert alive(pid)

        cancelled = await sisas_async(
            "cancel", handle.run_id, "--reason", "not needed", env=server_env(settings)
        )
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled (run_cancelled is in the log)" in cancelled.stdout
        await until(lambda: not alive(pid), "the child process being killed")
        await until((tmp_path / "polite-saw-cancel").exists, "ctx.cancelled being seen")

        with pytest.raises(RunCancelledError):
            await handle.result(timeout=10)
        state = await client.state(handle.run_id)
        assert state.status == "cancelled"
        assert {n: p.status for n, p in state.phases.items()} == {
            "start": "completed",
            "polite": "cancelled",
            "isolated": "cancelled",
            "after": "cancelled",
        }
        shown = await sisas_async("show", handle.run_id, "--json", env=server_env(settings))
        phases = {p["name"]: p["status"] for p in json.loads(shown.stdout)["phases"]}
        assert "running" not in phases.values() and phases["polite"] == "cancelled"


async def test_run_wait_exits_at_once_when_the_run_is_cancelled(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    """The run's worker is the CLI's own (no live worker serves `stubborn`; the
    orchestrator runs here, as `sisas up` would), and its phase ignores the
    cancellation: the command still ends, promptly, and says so."""
    data = tmp_path / "in.json"
    data.write_text('{"seconds": 600}')
    env = {
        **os.environ,
        "SISAS_NATS_URL": settings.nats_url or "",
        "SISAS_HOME": str(settings.home),
    }
    stack = contextlib.AsyncExitStack()
    proc = subprocess.Popen(
        [
            *SISAS,
            "run",
            f"{CODE}:stubborn",
            "--input",
            str(data),
            "--wait",
        ],
        cwd=ROOT,
        env={**env, "SISAS_REPLICAS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        client = Client(bus)
        await stack.enter_async_context(running_services(bus, {}))
        # its first line names the run: "run ID of stubborn requested (seed N)"
        line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        run_id = line.decode().split("run ", 1)[1].split()[0]
        handle = client.handle(run_id)
        async for s in handle.signals():
            if s.kind == "phase_started":
                break
        assert await handle.cancel("enough") is True
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        await stack.aclose()
    text = line.decode() + out.decode()
    assert proc.returncode == 1, text + err.decode()
    result = await handle.result(check=False)
    assert f"run {run_id} cancelled in " in text
    assert result.duration is not None  # the duration printed is the one recorded
    assert f"run {run_id} cancelled in {duration_text(result.duration)}," in text
    assert "cancelled: enough" in text  # the reason, said as such
    nap_rows = [line for line in text.splitlines() if line.lstrip().startswith("nap")]
    assert nap_rows and "cancelled" in nap_rows[-1], text  # no row left running
