"""``sisas signals`` and ``sisas tail``: reading the log."""

from __future__ import annotations

import json
import sys

import click

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.render import (
    dropped_note,
    issue_json,
    record_json,
    record_line,
    signals_table,
)
from sisas.signals import CorruptMessage, LogGap, StoredSignal, check_name, verify_chain

__all__ = ["signals", "tail"]


@cli.command()
@click.argument("run_id")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: the signals as on the wire, problems, verdict.",
)
@run_async
async def signals(run_id: str, as_json: bool) -> None:
    """Print the signals of RUN_ID in order and verify its hash chain.

    Exit code 0 when the chain is intact, 1 when a signal is corrupt or the chain is
    broken (both are listed), 2 when the log holds no such run.
    """
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-signals") as bus:
        records = await bus.log.read_run(run_id)
    if not records:
        fail(
            f"no signals for run {run_id!r} in this log: check the run id "
            "(and SISAS_HOME / SISAS_NATS_URL if it ran elsewhere)"
        )
    stored = [r.signal for r in records if isinstance(r, StoredSignal)]
    corrupt = [r for r in records if isinstance(r, CorruptMessage)]
    issues = verify_chain(stored, run_id=run_id)
    intact = not issues and not corrupt
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": run_id,
                    "pipeline": stored[0].pipeline if stored else None,
                    "intact": intact,
                    "signals": [record_json(r) for r in records if isinstance(r, StoredSignal)],
                    "corrupt": [record_json(r) for r in corrupt],
                    "chain_issues": [issue_json(i) for i in issues],
                }
            )
        )
    else:
        title = f"run {run_id}" + (f" of pipeline {stored[0].pipeline}" if stored else "")
        table, dropped = signals_table(records, title, width=console.width)
        console.print(table)
        if dropped:
            console.print(dropped_note(dropped, console.width))
        if intact:
            console.print(
                f"[green]chain intact[/]: {len(stored)} signals, head {stored[-1].hash[:16]}…"
            )
        for issue in issues:
            console.print(f"[bold red]chain broken[/] at seq {issue.seq}: {issue.message}")
        if corrupt:
            console.print(
                f"[bold red]{len(corrupt)} corrupt message(s)[/] on this run's "
                "subjects (listed above with their stream sequence)"
            )
    if not intact:
        sys.exit(1)


@cli.command()
@click.option("--all", "from_start", is_flag=True, help="Start at the beginning of the log.")
@click.option(
    "--from-seq", type=click.IntRange(1), default=None, help="Start at this stream sequence."
)
@click.option(
    "--last",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Start with the last N messages (when neither --all nor --from-seq).",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Stop after N records (default: follow until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
@run_async
async def tail(
    from_start: bool, from_seq: int | None, last: int, count: int | None, as_json: bool
) -> None:
    """Follow the whole log live: every signal of every run, as it is appended.

    Corrupt messages and holes in the stream are shown in red with their stream
    sequence; they never stop the tail.
    """
    async with open_bus(load_settings(), name="sisas-tail") as bus:
        if from_seq is None:
            from_seq = 1 if from_start else max(1, await bus.log.last_seq() - last + 1)
        if not as_json:
            err_console.print(
                f"[dim]following {bus.url} from stream seq {from_seq} (Ctrl-C to stop)[/]"
            )
        seen = 0
        async for rec in bus.log.follow(from_seq=from_seq, live=True):
            if as_json:
                print(json.dumps(record_json(rec)), flush=True)
            else:
                console.print(record_line(rec))
            if not isinstance(rec, LogGap):
                seen += 1
            if count is not None and seen >= count:
                return
