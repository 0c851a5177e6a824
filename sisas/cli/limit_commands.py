"""``sisas limits``: how many runs of a pipeline may go at once, and who waits."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from sisas.bus.limits import clear_limit, limits, set_limit
from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, load_settings, run_async
from sisas.handlers.admission import admission_chain
from sisas.services.admission import admission_state

__all__ = ["limits_group"]

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@cli.group("limits")
def limits_group() -> None:
    """Concurrency limits: at most N runs of a pipeline at once, the others queued.

    Runs over the limit wait in priority order (`sisas run --priority N`); each queued
    and released run is a signal in the chain adm-PIPELINE. Exit codes: 0 ok, 1 nothing
    to do (clear of a pipeline with no limit), 2 usage error.
    """


@limits_group.command("set")
@click.argument("pipeline")
@click.argument("max_runs", metavar="N", type=int)
@JSON_OPTION
@run_async
async def set_cmd(pipeline: str, max_runs: int, as_json: bool) -> None:
    """At most N runs of PIPELINE at once (max_concurrent_runs); the others wait."""
    async with open_bus(load_settings(), name="sisas-limits") as bus:
        before = await set_limit(bus, pipeline, max_runs)
    if as_json:
        print(json.dumps({"pipeline": pipeline, "limit": max_runs, "before": before}))
    else:
        was = f" (was {before})" if before is not None else ""
        console.print(
            f"at most {max_runs} runs of {pipeline} at once{was}; the others wait, "
            f"recorded in `sisas signals {admission_chain(pipeline)}`"
        )


@limits_group.command("clear")
@click.argument("pipeline")
@JSON_OPTION
@run_async
async def clear_cmd(pipeline: str, as_json: bool) -> None:
    """Lift PIPELINE's limit: runs still waiting go at once. Exit 1 when it had none."""
    async with open_bus(load_settings(), name="sisas-limits") as bus:
        before = await clear_limit(bus, pipeline)
    if as_json:
        print(json.dumps({"pipeline": pipeline, "cleared": before is not None}))
    if before is None:
        if not as_json:
            err_console.print(f"{pipeline} has no limit: nothing to clear (`sisas limits list`)")
        sys.exit(1)
    if not as_json:
        console.print(f"{pipeline} has no limit any more (it was {before})")


@limits_group.command("list")
@JSON_OPTION
@run_async
async def list_cmd(as_json: bool) -> None:
    """Each limited pipeline: its limit, the runs holding a slot, the runs waiting."""
    rows: list[dict[str, Any]] = []
    async with open_bus(load_settings(), name="sisas-limits") as bus:
        for pipeline, limit in sorted((await limits(bus)).items()):
            state, _ = await admission_state(bus, pipeline)
            waiting = sorted(state.waiting, key=lambda w: (-w.priority, w.order))
            rows.append(
                {
                    "pipeline": pipeline,
                    "limit": limit,
                    "holding": list(state.holders),
                    "waiting": [{"run_id": w.run_id, "priority": w.priority} for w in waiting],
                    "chain": admission_chain(pipeline),
                }
            )
    if as_json:
        print(json.dumps({"limits": rows}))
        return
    if not rows:
        console.print("no limits: `sisas limits set PIPELINE N`")
        return
    table = Table(title="concurrency limits", title_justify="left")
    for col in ("pipeline", "limit", "holding a slot (or ended since)", "waiting"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["pipeline"], str(r["limit"]), str(len(r["holding"])), str(len(r["waiting"]))
        )
    console.print(table)
