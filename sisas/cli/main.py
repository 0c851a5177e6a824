"""Entry point of the ``sisas`` command: importing the command modules registers them."""

from __future__ import annotations

from sisas.cli import demo_command, log_commands, schema_commands, server_commands  # noqa: F401
from sisas.cli.app import cli

__all__ = ["main"]


def main() -> None:
    cli(prog_name="sisas")
