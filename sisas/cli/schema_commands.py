"""``sisas schema export``: JSON Schemas of every signal kind."""

from __future__ import annotations

from pathlib import Path

import click

from sisas.cli.app import cli, console, fail
from sisas.schemas import export

__all__ = ["schema"]


@cli.group()
def schema() -> None:
    """JSON Schemas of the signals, for clients in any language."""


@schema.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def export_cmd(directory: Path) -> None:
    """Write one JSON Schema per signal kind (and signal.json for any kind) into DIRECTORY."""
    try:
        paths = export(directory)
    except OSError as exc:
        fail(f"cannot write schemas to {directory}: {exc.strerror}; choose a writable folder")
    console.print(
        f"wrote {len(paths)} schemas to {directory}/ "
        f"(JSON Schema 2020-12; signal.json accepts any kind)"
    )
