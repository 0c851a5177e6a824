"""``sisas output RUN PHASE``: a phase's output, verified, printed or saved."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from sisas.bus.artifacts import bytes_digest
from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, err_console, fail, load_settings, run_async
from sisas.client.client import Client
from sisas.contracts import shape_text
from sisas.handlers import binary
from sisas.signals import check_name
from sisas.signals.digest import arrow_type_name

__all__ = ["output", "summary"]


@cli.command()
@click.argument("run_id")
@click.argument("phase")
@click.option("--item", type=click.IntRange(0), default=None, help="One item of a fan-out.")
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write its bytes to FILE (- for standard output).",
)
@run_async
async def output(run_id: str, phase: str, item: int | None, out: Path | None) -> None:
    """Print (or save) PHASE's output in RUN_ID as it was stored.

    A JSON output is printed as it was stored. A numpy array (stored as .npy) or a table
    (stored as an Arrow IPC file) is summed up instead: dtype and shape, or schema and
    row count, and its digests; --out FILE writes its bytes (numpy.load and
    pyarrow.ipc.open_file read them). The bytes are checked against their digest before
    anything is shown or written. A fanned-out phase gives the list of its items'
    outputs in item order (--item N: one item; required when the items are arrays or
    tables). Exit 2 when the run, the phase or its output does not exist.
    """
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-output") as bus:
        data = await Client(bus).output_bytes(run_id, phase, item=item)
    where = phase if item is None else f"{phase}[{item}]"
    if out is not None and str(out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if out is None:
        if binary.format_of(data) == "json":
            sys.stdout.buffer.write(data + b"\n")
        else:
            sys.stdout.write("\n".join(summary(data, f"{where} in {run_id}")) + "\n")
        return
    try:
        await asyncio.to_thread(out.write_bytes, data)
    except OSError as exc:
        fail(f"cannot write to {out}: {exc.strerror}; pick a writable path")
    err_console.print(
        f"output of {where} in {run_id} written to {out} ({len(data)} bytes)", markup=False
    )


def summary(data: bytes, what: str) -> list[str]:
    """Lines that describe a stored array or table: what it is, its dtype and shape or
    its schema and row count, its semantic digest (as the log records it) and its
    artifact (bytes) digest. Exits 2 when the bytes cannot be read here."""
    stored = binary.format_of(data)
    try:
        if stored == "npy":
            arr = binary.decode(data)
            lines = [f"{what}: a numpy array, {arr.dtype.name}, shape {shape_text(arr.shape)}"]
            digest, form, reader = binary.digest_of(data), ".npy", "numpy.load"
        else:
            table = binary.read_table(data)
            kind = binary.stored_kind(table)
            origin = "pandas DataFrame" if kind == "pandas" else "pyarrow Table"
            lines = [
                f"{what}: a table ({origin}), {table.num_rows} rows, {table.num_columns} columns"
            ]
            width = max((len(f.name) for f in table.schema), default=0)
            lines += [f"  {f.name:<{width}}  {arrow_type_name(f.type)}" for f in table.schema]
            digest, form, reader = binary.digest_of(data), "Arrow IPC file", "pyarrow.ipc.open_file"
    except binary.Unstorable as exc:
        fail(f"the output of {what} cannot be read here: {exc}")
    return [
        *lines,
        f"digest    {digest}",
        f"artifact  {bytes_digest(data)} ({form}, {len(data)} bytes)",
        f"save it with --out FILE (read it with {reader})",
    ]
