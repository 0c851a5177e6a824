"""`sisas watch`: one run live until it ends, or an id the log does not hold (exit 2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus
from sisas.cli.live_commands import START_GRACE
from sisas.handlers.derive import keyed_run_id
from sisas.services.host import running_services
from tests.cli_process import Command, base_env, sisas, sisas_async
from tests.conftest import NatsServer
from tests.runs import EXAMPLE, POINTS_FILE


@pytest.fixture
def env(nats_server: NatsServer, tmp_path: Path) -> dict[str, str]:
    """A shared server with nothing running on it."""
    return base_env(
        SISAS_NATS_URL=nats_server.url, SISAS_HOME=str(tmp_path / "home"), SISAS_REPLICAS="1"
    )


def test_watch_an_unknown_run_exits_2_with_the_fix(env: dict[str, str]) -> None:
    out = sisas("watch", "nosuch-run", env=env)
    assert out.returncode == 2
    assert "no run 'nosuch-run'" in out.stderr
    assert "--wait-for-start" in out.stderr


async def test_watch_waits_for_start_when_told_and_ends_its_view_with_a_newline(
    bus: Bus, env: dict[str, str]
) -> None:
    run_id = keyed_run_id("clustering", "later")
    async with running_services(bus, {}):
        watching = await Command.start("watch", run_id, "--wait-for-start", env=env)
        # past the grace in which a plain `watch` gives up (exit 2): still waiting
        await asyncio.sleep(START_GRACE + 3)
        assert watching.proc.returncode is None, watching.err
        run = await sisas_async(
            "run", EXAMPLE, "--input", POINTS_FILE, "--idempotency-key", "later", "--wait", env=env
        )
        assert run.returncode == 0, run.stderr
        assert await watching.finish() == 0, watching.err
    assert "checks: " in watching.out
    assert watching.out.endswith("\n")
