"""``sisas logs RUN [PHASE]``: what each attempt of a run logged."""

from __future__ import annotations

import contextlib
import json

import click

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, load_settings, run_async
from sisas.client.client import Client
from sisas.client.logs import AttemptLogEntry, attempt_log_entry
from sisas.signals import ENDING_KINDS, StoredSignal, check_name

__all__ = ["logs"]


@cli.command()
@click.argument("run_id")
@click.argument("phase", required=False)
@click.option("--item", type=click.IntRange(0), default=None, help="One item of a fan-out.")
@click.option(
    "--follow", "-f", is_flag=True, help="Go on printing attempts as they end, until the run ends."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object a line, every attempt: phase, item, attempt, status, log, text.",
)
@run_async
async def logs(
    run_id: str, phase: str | None, item: int | None, follow: bool, as_json: bool
) -> None:
    """Print what each attempt of RUN_ID logged (of PHASE, of one --item).

    An attempt's log holds its ctx.log lines at INFO and above, what it printed to stdout
    and stderr, and the traceback of an exception, each line with its offset from the
    attempt's start. It is stored by digest and named by the attempt's outcome signal,
    so it is checked like an output. Logs are kept within limits (the first and last 500
    lines of an attempt); the header says how many lines were dropped. Exit 2 when the
    run or the phase does not exist.
    """
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-logs") as bus:
        client = Client(bus)
        shown = silent = 0
        if not follow:
            for entry in await client.logs(run_id, phase, item=item):
                if not entry.log and not as_json:
                    silent += 1  # counted, not listed: a fan-out's items mostly log nothing
                    continue
                _print(entry, as_json)
                shown += 1
        else:
            await client.logs(run_id, phase, item=item)  # exit 2 for a run or phase unknown
            async with contextlib.aclosing(bus.log.follow_run(run_id)) as records:
                async for rec in records:
                    if not isinstance(rec, StoredSignal):
                        continue
                    ended = attempt_log_entry(rec.signal)
                    if (
                        ended is not None
                        and (phase is None or ended.phase == phase)
                        and (item is None or ended.item == item)
                    ):
                        _print(await client.read_log(ended), as_json)
                        shown += 1
                    if rec.signal.kind in ENDING_KINDS:
                        break
        run_end = ""
        if not shown and not silent and not as_json:  # "yet" only while the run goes on
            stored = await bus.log.read_run(run_id)
            ends = [
                r.signal.kind
                for r in stored
                if isinstance(r, StoredSignal) and r.signal.kind in ENDING_KINDS
            ]
            run_end = ends[-1] if ends else ""
    what = f"{phase} of {run_id}" if phase else run_id
    if silent and not as_json:
        err_console.print(
            f"{silent} ended attempt{'s' * (silent != 1)} of {what} logged nothing "
            "(--json lists every attempt)",
            markup=False,
        )
    elif not shown and not as_json:
        if run_end:
            err_console.print(
                f"no attempt of {what} ended, and none will: the run ended ({run_end})",
                markup=False,
            )
        else:
            err_console.print(f"no attempt of {what} has ended yet", markup=False)


def _print(entry: AttemptLogEntry, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "phase": entry.phase,
                    "item": entry.item,
                    "attempt": entry.attempt,
                    "status": entry.status,
                    "seq": entry.seq,
                    "log": entry.log,
                    "lines": entry.lines,
                    "dropped": entry.dropped,
                    "text": entry.text,
                }
            ),
            flush=True,
        )
        return
    if not entry.log:
        count = "no log lines"
    else:
        count = f"{entry.lines} line{'s' * (entry.lines != 1)}"
        if entry.dropped:
            count += f", {entry.dropped} dropped"
    style = {"completed": "green", "failed": "red", "timed_out": "red"}[entry.status]
    console.rule(
        f"[bold]{entry.where}[/] [{style}]{entry.status}[/] · {count}", align="left", style="dim"
    )
    if entry.text:
        console.print(entry.text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
