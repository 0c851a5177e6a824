"""What `sisas up`'s panel says of its dashboard: the flags it names are up's own."""

from __future__ import annotations

import signal

from sisas.bus.settings import Settings
from tests.cli_process import Command, server_env


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
