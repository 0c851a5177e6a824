"""``sisas output RUN PHASE``: a phase's output, verified, printed or saved."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, err_console, fail, load_settings, run_async
from sisas.client.client import Client
from sisas.signals import check_name

__all__ = ["output"]


@cli.command()
@click.argument("run_id")
@click.argument("phase")
@click.option("--item", type=click.IntRange(0), default=None, help="One item of a fan-out.")
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it to FILE."
)
@run_async
async def output(run_id: str, phase: str, item: int | None, out: Path | None) -> None:
    """Print (or save) PHASE's output in RUN_ID as the JSON it was stored as.

    The bytes are checked against their digest before anything is written. A fanned-out
    phase gives the list of its items' outputs in item order (--item N: one item).
    Exit 2 when the run, the phase or its output does not exist.
    """
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-output") as bus:
        data = await Client(bus).output_bytes(run_id, phase, item=item)
    if out is None:
        sys.stdout.buffer.write(data + b"\n")
        return
    try:
        await asyncio.to_thread(out.write_bytes, data)
    except OSError as exc:
        fail(f"cannot write to {out}: {exc.strerror}; pick a writable path")
    where = phase if item is None else f"{phase}[{item}]"
    err_console.print(f"output of {where} in {run_id} written to {out} ({len(data)} bytes)")
