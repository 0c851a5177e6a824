"""``sisas limits``: how many runs of a pipeline, or carrying a tag, may go at once, and
who waits."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from sisas.bus.limits import (
    clear_limit,
    clear_tag_limit,
    limits,
    set_limit,
    set_tag_limit,
    tag_limits,
)
from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, load_settings, run_async
from sisas.errors import UsageError
from sisas.handlers.admission import TAGS_CHAIN, admission_chain
from sisas.services.admission import admission_state, chain_state

__all__ = ["limits_group"]

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@cli.group("limits")
def limits_group() -> None:
    """Concurrency limits: at most N runs of a pipeline, or carrying a tag, at once.

    Runs over a limit wait in priority order (`sisas run --priority N`); each queued and
    released run is a signal in the chain adm-PIPELINE (adm--tags for tags), with the
    limit it waits for. Exit codes: 0 ok, 1 nothing to do (clear of a limit that is not
    set), 2 usage error.
    """


TAG_OPTION = click.option(
    "--tag", "tag", default=None, metavar="KEY=VALUE", help="The limit of runs carrying this tag."
)


def _target(args: tuple[str, ...], tag: str | None, n: bool) -> tuple[str, int]:
    """(PIPELINE or "", N or 0) from ``set PIPELINE N`` / ``set --tag K=V N`` (``n``:
    N expected)."""
    want = (1 if n else 0) + (0 if tag else 1)
    if len(args) != want:
        form = "[PIPELINE | --tag KEY=VALUE]" + (" N" if n else "")
        raise UsageError(f"give {form}: a pipeline or a tag{', and N' if n else ''}")
    if not n:
        return (args[0] if args else ""), 0
    try:
        return (args[0] if not tag else ""), int(args[-1])
    except ValueError:
        raise UsageError(f"N must be a whole number, not {args[-1]!r}") from None


@limits_group.command("set")
@click.argument("args", nargs=-1, metavar="[PIPELINE] N")
@TAG_OPTION
@JSON_OPTION
@run_async
async def set_cmd(args: tuple[str, ...], tag: str | None, as_json: bool) -> None:
    """At most N runs of PIPELINE (or carrying --tag KEY=VALUE, any pipeline) at once
    (max_concurrent_runs); the others wait."""
    pipeline, max_runs = _target(args, tag, n=True)
    async with open_bus(load_settings(), name="sisas-limits") as bus:
        if tag:
            before = await set_tag_limit(bus, tag, max_runs)
        else:
            before = await set_limit(bus, pipeline, max_runs)
            known = await PlanRegistry(bus.js).names()
            if pipeline not in known:  # a typo, or a pipeline no worker has run yet
                err_console.print(
                    f"note: no worker has registered a pipeline {pipeline!r} (known: "
                    f"{', '.join(sorted(known)) or 'none'}): the limit applies to runs of "
                    f"that name; check the name (`sisas limits clear {pipeline}` lifts it)",
                    markup=False,
                )
    chain = TAGS_CHAIN if tag else admission_chain(pipeline)
    if as_json:
        key = {"tag": tag} if tag else {"pipeline": pipeline}
        print(json.dumps({**key, "limit": max_runs, "before": before}))
    else:
        was = f" (was {before})" if before is not None else ""
        noun = "run" if max_runs == 1 else "runs"
        runs = f"{noun} carrying {tag}" if tag else f"{noun} of {pipeline}"
        console.print(
            f"at most {max_runs} {runs} at once{was}; the others wait, "
            f"recorded in `sisas signals {chain}`"
        )


@limits_group.command("clear")
@click.argument("args", nargs=-1, metavar="[PIPELINE]")
@TAG_OPTION
@JSON_OPTION
@run_async
async def clear_cmd(args: tuple[str, ...], tag: str | None, as_json: bool) -> None:
    """Lift PIPELINE's limit (or --tag KEY=VALUE's): runs still waiting under it go at
    once. Exit 1 when it had none."""
    pipeline, _ = _target(args, tag, n=False)
    async with open_bus(load_settings(), name="sisas-limits") as bus:
        before = await clear_tag_limit(bus, tag) if tag else await clear_limit(bus, pipeline)
    what = f"tag {tag}" if tag else pipeline
    if as_json:
        key = {"tag": tag} if tag else {"pipeline": pipeline}
        print(json.dumps({**key, "cleared": before is not None}))
    if before is None:
        if not as_json:
            err_console.print(f"{what} has no limit: nothing to clear (`sisas limits list`)")
        sys.exit(1)
    if not as_json:
        console.print(f"{what} has no limit any more (it was {before})")


@limits_group.command("list")
@JSON_OPTION
@run_async
async def list_cmd(as_json: bool) -> None:
    """Each limited pipeline and tag: its limit, the runs holding a slot, the runs waiting."""
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
        tagged = await tag_limits(bus)
        if tagged:
            state, _ = await chain_state(bus, TAGS_CHAIN)
            waiting = sorted(state.waiting, key=lambda w: (-w.priority, w.order))
            for tag, limit in sorted(tagged.items()):
                rows.append(
                    {
                        "tag": tag,
                        "limit": limit,
                        "holding": [r for r in state.holders if tag in state.tagged.get(r, ())],
                        "waiting": [
                            {"run_id": w.run_id, "priority": w.priority, "pipeline": w.pipeline}
                            for w in waiting
                            if tag in w.tags
                        ],
                        "chain": TAGS_CHAIN,
                    }
                )
    if as_json:
        print(json.dumps({"limits": rows}))
        return
    if not rows:
        console.print("no limits: `sisas limits set PIPELINE N` or `--tag KEY=VALUE N`")
        return
    table = Table(title="concurrency limits", title_justify="left")
    for col in ("pipeline or tag", "limit", "holding a slot (or ended since)", "waiting"):
        table.add_column(col)
    for r in rows:
        name = r["pipeline"] if "pipeline" in r else f"tag {r['tag']}"
        table.add_row(name, str(r["limit"]), str(len(r["holding"])), str(len(r["waiting"])))
    console.print(table)
