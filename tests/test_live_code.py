"""The code that runs is the code the user passed: `sisas run FILE` refuses when the
live workers run other code, and `--reload` makes a worker pick up a changed file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sisas.bus.presence import live_workers
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client import Client
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from tests.cli_process import server_env, sisas_async

CODE = """\
from sisas.pipeline import Context, HardFailure, Pipeline

orders = Pipeline("orders_etl", version="1")


@orders.phase()
def extract(ctx: Context, input: dict[str, int]) -> int:
    return int(input.get("n", 1))


@orders.phase()
def load(ctx: Context, extract: int) -> int:
    {body}
"""


def write(path: Path, body: str) -> None:
    path.write_text(CODE.format(body=body))
    later = time.time() + 2  # a new mtime even within the file system's granularity
    os.utime(path, (later, later))


async def fingerprints(bus: Bus) -> set[str]:
    """The code fingerprints the live workers of orders_etl answer with (waiting for the
    first to be live)."""
    for _ in range(100):
        live = await live_workers(bus.wire, "orders_etl")
        if live:
            return {a["fingerprints"]["orders_etl"] for a in live}
        await asyncio.sleep(0.05)
    return set()


async def test_run_refuses_code_other_than_the_live_workers_and_reload_picks_it_up(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    served, edited = tmp_path / "orders_etl.py", tmp_path / "edited.py"
    write(served, "return extract * 10")
    write(edited, 'raise HardFailure("the edited copy breaks")')
    pipes = load_pipelines([str(served)], entry_points=False)
    old = pipes["orders_etl"].plan().fingerprint
    new = load_pipelines([str(edited)], entry_points=False)["orders_etl"].plan().fingerprint
    (tmp_path / "in.json").write_text('{"n": 4}')
    async with running_services(bus, pipes, reload=True):
        assert await fingerprints(bus) == {old}
        refused = await sisas_async(
            "run",
            str(edited),
            "--input",
            str(tmp_path / "in.json"),
            "--wait",
            env=server_env(settings),
        )
        err = refused.stderr
        assert refused.returncode == 2, refused.stdout + err
        assert "run other code" in err and old[:23] in err and new[:23] in err
        assert "--reload" in err and "restart them with" in err
        by_name = await sisas_async(
            "run",
            "orders_etl",
            "--input",
            str(tmp_path / "in.json"),
            "--wait",
            env=server_env(settings),
        )
        assert by_name.returncode == 0, by_name.stderr

        write(served, "return extract * 100")  # the user edits the file the worker serves
        for _ in range(100):
            if await fingerprints(bus) != {old}:
                break
            await asyncio.sleep(0.1)
        (now,) = await fingerprints(bus)
        assert now != old
        client = Client(bus)
        handle = await client.start("orders_etl", {"n": 4})
        result = await handle.result(timeout=60)
        assert await handle.output("load") == 400
        assert result.state is not None and result.state.plan is not None
        assert result.state.plan.fingerprint == now  # the run records the code that ran

        write(served, "return (")  # a syntax error while typing: the last good code runs
        await asyncio.sleep(1.5)
        assert await fingerprints(bus) == {now}
        again = await client.start("orders_etl", {"n": 1})
        await again.result(timeout=60)
        assert await again.output("load") == 100
