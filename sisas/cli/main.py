"""Entry point of the ``sisas`` command: importing the command modules registers them."""

from __future__ import annotations

from sisas.cli import (  # noqa: F401
    audit_commands,
    backfill_commands,
    batch_command,
    cluster_commands,
    demo_command,
    key_commands,
    limit_commands,
    live_commands,
    log_commands,
    logs_command,
    output_command,
    query_commands,
    replay_commands,
    run_commands,
    schedule_commands,
    schema_commands,
    security_commands,
    server_commands,
    trigger_commands,
)
from sisas.cli.app import cli

__all__ = ["main"]


def main() -> None:
    cli(prog_name="sisas")
