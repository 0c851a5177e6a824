"""``sisas backfill``: one run per partition (time window or listed key), at most N at
once, one backfill id and a summary; ``sisas backfills list|show`` to see them."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sisas.bus.runtime import Bus, open_bus
from sisas.cli.app import cli, console, err_console, load_settings, run_async
from sisas.cli.run_commands import PIPELINES_OPTION, named_or_loaded
from sisas.cli.run_inputs import parse_set
from sisas.cli.schedule_commands import SCHEDULES_OPTION, load_schedules
from sisas.cli.tags import tag_option
from sisas.client.backfills import (
    BackfillProgress,
    BackfillReport,
    backfill_ids,
    drive_backfill,
    plan_backfill,
    read_backfill,
)
from sisas.client.client import Client
from sisas.client.starting import check_settings
from sisas.errors import UsageError
from sisas.handlers.schedules import Schedule
from sisas.loader import load_pipelines
from sisas.security.keys import signer_from_file
from sisas.services.hosting import check_live_code, hosting, pipeline_plan
from sisas.signals import RunCancelled, RunFailed, StoredSignal

__all__ = ["backfill", "backfills"]

JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
_STYLE = {
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "blue",
    "missing": "dim",
    "skipped": "dim",
}


def _moment(text: str | None, what: str) -> datetime | None:
    """``2026-01-01`` or ``2026-01-01T06:00[:00][+01:00|Z]``; naive times are in the
    backfill's time zone."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{what} {text!r} is not a time: write 2026-01-01 or 2026-01-01T06:00:00 "
            "(in --timezone), or with an offset (2026-01-01T06:00:00+01:00, …Z)"
        ) from None


def _keys(listed: str | None, file: str | None) -> list[str] | None:
    if listed is not None and file is not None:
        raise UsageError("give --partitions or --partitions-file, not both")
    if listed is not None:
        return listed.split(",")
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --partitions-file {file}: {exc.strerror}") from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    return None


def _template(text: str | None) -> Any:
    if text is None:
        return "$"
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"--input-template is not JSON ({exc}): e.g. "
            '\'{"day": "$.date", "since": "$.window.start"}\''
        ) from None


def _schedule(name: str | None, file: str | None, local: dict[str, Any]) -> Schedule | None:
    if name is None:
        return None
    found = {s.name: s for s in load_schedules(file, local)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise UsageError(
            f"no schedule {name!r} (known: {known}): pass --schedules FILE or --pipelines "
            "CODE declaring it"
        )
    return found[name]


@cli.command()
@click.argument("pipeline")
@click.option("--from", "start", default=None, help="First window's earliest start (ISO 8601).")
@click.option("--to", "end", default=None, help="Last window's latest end (ISO 8601).")
@click.option(
    "--every", default=None, help="Window length: 15m, 1h, 6h, 1d, 1w, or a cron expression."
)
@click.option(
    "--schedule",
    "schedule_name",
    default=None,
    help="Windows of this schedule's cron and zone; its input, config and tags apply.",
)
@SCHEDULES_OPTION
@click.option("--timezone", default="UTC", help="IANA zone of the windows (default UTC).")
@click.option("--partitions", "listed", default=None, help="Listed partition keys: k1,k2,…")
@click.option("--partitions-file", default=None, help="A file with one partition key a line.")
@click.option(
    "--max-concurrent",
    type=int,
    default=0,
    help="At most N of the backfill's runs not ended at once (default: no limit).",
)
@click.option("--all", "rerun_all", is_flag=True, help="Run every partition, completed ones too.")
@click.option(
    "--input-template",
    default=None,
    help="The run input as JSON with $ paths ($.partition, $.window.start, $.date…).",
)
@click.option("--set", "settings_", multiple=True, metavar="KEY=VALUE", help="Config. Repeatable.")
@click.option("--seed", type=int, default=None, help="Seed of every run (default: per partition).")
@click.option("--priority", type=int, default=0, help="Under a limit, higher runs go first.")
@click.option("--id", "name", default="", help="Name the backfill bf-NAME (default: derived).")
@tag_option("A tag on every run of the backfill (repeat for more), e.g. --tag team=data.")
@JSON_OPTION
@PIPELINES_OPTION
@run_async
async def backfill(
    pipeline: str,
    start: str | None,
    end: str | None,
    every: str | None,
    schedule_name: str | None,
    schedules_file: str | None,
    timezone: str,
    listed: str | None,
    partitions_file: str | None,
    max_concurrent: int,
    rerun_all: bool,
    input_template: str | None,
    settings_: tuple[str, ...],
    seed: int | None,
    priority: int,
    name: str,
    tags: dict[str, str],
    as_json: bool,
    pipeline_specs: tuple[str, ...],
) -> None:
    """Run PIPELINE once per partition: each time window [start, end) from --from to
    --to (--every or --schedule), or each listed key; at most --max-concurrent at once.

    One backfill id (derived from the pipeline and the partitions); asking again runs
    only the partitions with no completed run (--all: every one) and a stopped backfill
    resumes where it was, never starting a partition twice. Every decision is a signal
    in the backfill's chain (`sisas signals BACKFILL_ID`). Exit 0 when every run
    completed, 1 when any failed or was cancelled, 2 for usage errors.
    """
    local = load_pipelines(pipeline_specs)
    pipeline = named_or_loaded(pipeline, local)
    plan = plan_backfill(
        pipeline,
        partitions=_keys(listed, partitions_file),
        start=_moment(start, "--from"),
        end=_moment(end, "--to"),
        every=every or "",
        timezone=timezone,
        schedule=_schedule(schedule_name, schedules_file, local),
        input=_template(input_template),
        config=parse_set(settings_),
        seed=seed,
        tags=tags,
        max_concurrent=max_concurrent,
        rerun_all=rerun_all,
        name=name,
        priority=priority,
        code=local.get(pipeline),
    )
    settings = load_settings()
    async with open_bus(settings, name="sisas-backfill") as bus:
        check_settings(dict(plan.config), await pipeline_plan(bus, pipeline, local))
        await check_live_code(bus, pipeline, local)
        client = Client(bus, requested_by="sisas backfill")
        key = bus.settings.signing_key
        signer = signer_from_file(key) if key is not None else None
        async with hosting(bus, pipeline, local) as host:
            with Progress(
                TextColumn(f"backfill {plan.backfill_id}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                disable=as_json,
            ) as progress:
                task = progress.add_task("", total=len(plan.partitions))

                def show(p: BackfillProgress) -> None:
                    progress.update(
                        task,
                        completed=p.completed + p.failed + p.cancelled + p.skipped,
                        description=(
                            f"round {p.round}: {p.completed} completed, {p.failed} failed, "
                            f"{p.skipped} skipped, {p.running} running, {p.waiting} waiting"
                        ),
                    )

                try:
                    report = await drive_backfill(
                        client, plan, on_progress=show, requested_by="sisas backfill", signer=signer
                    )
                except asyncio.CancelledError:
                    where = (
                        "the runs it launched continue when `sisas up` runs on this data folder"
                        if host.own_server
                        else "the runs it launched go on"
                    )
                    err_console.print(
                        f"backfill {plan.backfill_id} stopped: {where}; run the same command "
                        "again to resume it (no partition starts twice)"
                    )
                    raise
        errors = await _errors(bus, report)
    _print_report(report, as_json, errors)
    sys.exit(0 if report.ok else 1)


async def _errors(bus: Bus, report: BackfillReport) -> dict[str, str]:
    """Why each failed or cancelled run of the round ended, from its last signal."""
    errors: dict[str, str] = {}
    for row in report.partitions:
        if row["status"] not in ("failed", "cancelled") or not row["run_id"]:
            continue
        last = await bus.log.last_of_run(row["run_id"])
        body = last.signal.body if isinstance(last, StoredSignal) else None
        if isinstance(body, RunFailed):
            where = f" (phase {body.failed_phase})" if body.failed_phase else ""
            errors[row["run_id"]] = f"{body.error.kind}: {body.error.message}{where}"
        elif isinstance(body, RunCancelled):
            errors[row["run_id"]] = f"cancelled: {body.reason}" if body.reason else "cancelled"
    return errors


def _print_report(report: BackfillReport, as_json: bool, errors: dict[str, str]) -> None:
    fin = report.finished
    if as_json:
        print(
            json.dumps(
                {
                    "backfill_id": report.backfill_id,
                    "pipeline": report.pipeline,
                    "round": fin.round,
                    "partitions": len(report.partitions),
                    "completed": fin.completed,
                    "failed": fin.failed,
                    "cancelled": fin.cancelled,
                    "skipped": fin.skipped,
                    "failed_partitions": list(fin.failed_partitions),
                    "results": [
                        {**r, "error": errors.get(r["run_id"]) if r["run_id"] else None}
                        for r in report.partitions
                    ],
                }
            )
        )
        return
    table = Table(
        title=f"backfill {report.backfill_id} round {fin.round}: {fin.completed} completed, "
        f"{fin.failed} failed, {fin.cancelled} cancelled, {fin.skipped} skipped",
        title_justify="left",
    )
    for col in ("partition", "status", "run", "attempts", *(["error"] if errors else [])):
        table.add_column(col)
    shown = report.partitions
    if len(shown) > 60:  # the failed ones, then the first and last of the others
        bad = [r for r in shown if r["status"] not in ("completed", "skipped")]
        good = [r for r in shown if r["status"] in ("completed", "skipped")]
        shown = bad + good[:10] + good[-10:]
    for row in shown:
        style = _STYLE.get(row["status"], "")
        error = [errors.get(row["run_id"], "")] if errors else []
        table.add_row(
            row["partition"],
            f"[{style}]{row['status']}[/]",
            row["run_id"],
            str(row["attempts"]),
            *error,
        )
    console.print(table)
    if len(shown) < len(report.partitions):
        hidden = len(report.partitions) - len(shown)
        console.print(f"({hidden} completed or skipped not shown: --json lists all)")
    console.print(f"every decision: `sisas signals {report.backfill_id}`")
    if errors:
        first = next(iter(errors))
        console.print(
            f"why a run failed: `sisas show {first}`; after a fix, the same command again "
            "runs only the partitions that did not complete"
        )


@cli.group()
def backfills() -> None:
    """The backfills in the log: their rounds and each partition's status.

    Exit codes: 0 ok, 2 usage error (no such backfill).
    """


@backfills.command("list")
@click.option("--pipeline", default="", help="Only the backfills of this pipeline.")
@JSON_OPTION
@run_async
async def list_backfills(pipeline: str, as_json: bool) -> None:
    """Each backfill: pipeline, round, state, and its partitions by status."""
    rows = []
    async with open_bus(load_settings(), name="sisas-backfills") as bus:
        for bid in await backfill_ids(bus):
            row = await read_backfill(bus, bid)
            if not pipeline or row["pipeline"] == pipeline:
                rows.append({k: v for k, v in row.items() if k != "partitions"})
    rows.sort(key=lambda r: r["last_decision_at"] or "", reverse=True)  # the latest first
    if as_json:
        print(json.dumps({"backfills": rows}))
        return
    if not rows:
        of = f" of {pipeline}" if pipeline else ""
        console.print(f"no backfills{of}: `sisas backfill PIPELINE --from T --to T --every 1h`")
        return
    table = Table(title="backfills, the latest first", title_justify="left")
    for col in ("backfill", "pipeline", "round", "state", "last decision", "partitions by status"):
        table.add_column(col)
    for r in rows:
        counts = ", ".join(
            f"[{_STYLE.get(s, '')}]{n} {s}[/]" for s, n in sorted(r["counts"].items())
        )
        when = (r["last_decision_at"] or "-").replace("T", " ")[:19]
        table.add_row(r["backfill_id"], r["pipeline"], str(r["round"]), r["state"], when, counts)
    console.print(table)


@backfills.command("show")
@click.argument("backfill_id")
@JSON_OPTION
@run_async
async def show_backfill(backfill_id: str, as_json: bool) -> None:
    """One backfill: each partition's status, run and attempts."""
    async with open_bus(load_settings(), name="sisas-backfills") as bus:
        row = await read_backfill(bus, backfill_id)
    if as_json:
        print(json.dumps(row))
        return
    limit = f", at most {row['max_concurrent']} at once" if row["max_concurrent"] else ""
    every = f", every {row['every']!r} in {row['timezone']}" if row["every"] else ""
    console.print(
        f"backfill {backfill_id} of {row['pipeline']}: round {row['round']}, "
        f"{row['state']}{every}{limit}"
    )
    table = Table(title_justify="left")
    for col in ("partition", "status", "run", "attempts"):
        table.add_column(col)
    for p in row["partitions"]:
        style = _STYLE.get(p["status"], "")
        table.add_row(p["partition"], f"[{style}]{p['status']}[/]", p["run_id"], str(p["attempts"]))
    console.print(table)
