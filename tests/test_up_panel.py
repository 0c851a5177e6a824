"""What `sisas up`'s panel says of its dashboard: the flags it names are up's own."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

from sisas.bus.settings import Settings
from tests.cli_process import PATIENCE, Command, server_env


async def _panel(settings: Settings, *options: str) -> str:
    cmd = await Command.start("up", *options, env=server_env(settings))
    await cmd.until("to stop")
    cmd.proc.send_signal(signal.SIGINT)
    assert await cmd.finish() == 0, cmd.err
    return " ".join(cmd.out.split())


async def test_up_names_its_own_flag_for_actions_and_says_when_the_dashboard_is_off(
    settings: Settings,
) -> None:
    """Read-only, the panel names `--dashboard-actions` (what `up` takes), not `sisas
    dashboard`'s `--allow-actions`; with --no-dashboard or --no-handlers it says the
    dashboard is off and why, rather than leaving the row out."""
    served = await _panel(settings, "--dashboard-port", "0")
    assert "(read-only, live, pid" in served
    assert "--dashboard-actions lets a signed-in operator act" in served
    assert "--allow-actions" not in served
    assert "dashboard off (--no-dashboard)" in await _panel(settings, "--no-dashboard")
    assert "dashboard off (--no-handlers)" in await _panel(settings, "--no-handlers")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def test_the_dashboard_process_stops_when_up_is_killed_with_sigkill(
    settings: Settings,
) -> None:
    """`kill -9` of `sisas up` gives its `sisas dashboard` process no chance to be told:
    it notices that up is gone and stops, so the port is free for the next `sisas up`."""
    cmd = await Command.start("up", "--dashboard-port", "0", env=server_env(settings))
    await cmd.until("to stop")
    found = re.search(r"\(read-only, live, pid (\d+)\)", cmd.out)
    assert found, cmd.out
    pid = int(found.group(1))
    assert _alive(pid)
    cmd.proc.kill()
    await cmd.finish()
    deadline = time.monotonic() + PATIENCE
    while _alive(pid):
        assert time.monotonic() < deadline, f"sisas dashboard (pid {pid}) outlived its up"
        await asyncio.sleep(0.1)
