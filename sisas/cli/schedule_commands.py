"""``sisas schedules``: list, pause, resume, run the scheduler, and test a cron expression."""

from __future__ import annotations

import getpass
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus, open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async, stop_on_signals
from sisas.cli.render import Cell, Column, dropped_note, fit_table
from sisas.cli.run_commands import PIPELINES_OPTION
from sisas.errors import UsageError
from sisas.handlers.schedules import (
    Schedule,
    check_cron,
    check_zone,
    next_ticks,
    parse_schedules,
    schedule_chain,
    schedules_of,
)
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.projections.queries import parse_since
from sisas.services.schedules import (
    Pause,
    ScheduleService,
    last_decision,
    logged_schedules,
    pause_schedule,
    paused_schedules,
    resume_schedule,
)
from sisas.signals import ScheduleTicked
from sisas.signals.names import check_name

__all__ = ["load_schedules", "schedules"]

DEFAULT_FILE = "sisas.toml"
FIX = "pass --schedules FILE ([[schedule]] tables) or --pipelines CODE declaring schedules"


def load_schedules(
    path: str | None, pipes: dict[str, Pipeline], *, default: bool = True
) -> list[Schedule]:
    """The schedules of ``path`` (without it and with ``default``: ./sisas.toml's
    ``[[schedule]]`` tables, if any) and those the loaded pipelines declare. Raises
    UsageError naming the fix."""
    found: list[Schedule] = []
    if path is None and not default:
        return schedules_of(pipes.values())
    file = Path(path or DEFAULT_FILE)
    try:
        text = file.read_text()
    except FileNotFoundError:
        if path:
            raise UsageError(f"no schedules file {file}: {FIX}") from None
        text = ""
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}; {FIX}") from None
    if path or "[[schedule]]" in text:
        found.extend(parse_schedules(text, str(file)))
    found.extend(schedules_of(pipes.values()))
    names = [s.name for s in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(
            f"schedule names must be unique: {', '.join(twice)} declared twice (in "
            f"{file} and a pipeline, or twice in one): rename one"
        )
    return found


def _operator() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "an operator"


SCHEDULES_OPTION = click.option(
    "--schedules",
    "schedules_file",
    default=None,
    help="Schedules file (TOML, [[schedule]] tables; default ./sisas.toml when it has some).",
)
_COLUMNS = (
    Column("name"),
    Column("state"),
    Column("cron (zone)", keep=50),
    Column("next tick", keep=70),
    Column("last decision", keep=60, wrap=24),
    Column("pipeline", keep=30),
    Column("policies", keep=20),
)
"""What ``schedules list`` shows, and what a narrow terminal drops first."""
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@cli.group()
def schedules() -> None:
    """Start runs on a clock: cron schedules, each tick one run, each decision a signal.

    Exit codes: 0 ok, 1 nothing to do (resume of a schedule not paused), 2 usage error.
    """


def _pause_json(pause: Pause | None) -> dict[str, Any] | None:
    return None if pause is None else {"by": pause.by, "at": pause.at, "note": pause.note}


def _last_json(last: ScheduleTicked | None) -> dict[str, Any] | None:
    if last is None:
        return None
    return {
        "tick": last.tick,
        "action": last.action,
        "reason": last.reason,
        "run_id": last.run_id or None,
    }


@schedules.command("list")
@SCHEDULES_OPTION
@PIPELINES_OPTION
@JSON_OPTION
@run_async
async def list_schedules(
    schedules_file: str | None, pipeline_specs: tuple[str, ...], as_json: bool
) -> None:
    """Each schedule: its cron and policies, paused or not, its next tick, its last decision."""
    found = load_schedules(schedules_file, load_pipelines(pipeline_specs))
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    async with open_bus(load_settings(), name="sisas-schedules") as bus:
        paused = await paused_schedules(bus)
        logged = await logged_schedules(bus)
        declared = {s.name for s in found}
        others = sorted((logged.keys() | paused.keys()) - declared)
        if not found and not others:
            fail(f"no schedules found: {FIX}")
        for s in found:
            last = await last_decision(bus, s.name)
            pause = paused.get(s.name)
            rows.append(
                {
                    "name": s.name,
                    "pipeline": s.pipeline,
                    "cron": s.cron,
                    "timezone": s.timezone,
                    "overlap": s.overlap,
                    "catch_up": s.catch_up_limit,
                    "tags": s.tags,
                    "paused": pause is not None,
                    "paused_by": _pause_json(pause),
                    "next_tick": next_ticks(s.cron, s.timezone, now, 1)[0].isoformat(),
                    "chain": schedule_chain(s.name),
                    "last": _last_json(last),
                    "declared": True,
                }
            )
        for name in others:  # run by a scheduler that loaded another file or code
            last, pause = logged.get(name), paused.get(name)
            rows.append(
                {
                    "name": name,
                    "pipeline": last.pipeline if last is not None else "",
                    "cron": "",
                    "timezone": "",
                    "overlap": "",
                    "catch_up": None,
                    "tags": {},
                    "paused": pause is not None,
                    "paused_by": _pause_json(pause),
                    "next_tick": None,
                    "chain": schedule_chain(name),
                    "last": _last_json(last),
                    "declared": False,
                }
            )
    if as_json:
        print(json.dumps({"schedules": rows}))
        return
    cells: list[list[Cell]] = []
    for r in rows:
        last = r["last"]
        last_text = "never ticked" if last is None else f"{last['tick']} {last['action']}"
        if last and last["run_id"]:
            last_text += f" {last['run_id']}"
        cells.append(
            [
                r["name"] + ("" if r["declared"] else " *"),
                "paused" if r["paused"] else "active",
                f"{r['cron']} ({r['timezone']})" if r["declared"] else "-",
                r["next_tick"] or "-",
                last_text,
                r["pipeline"],
                f"overlap {r['overlap']}, catch-up {r['catch_up']}" if r["declared"] else "-",
            ]
        )
    table, dropped = fit_table(_COLUMNS, cells, width=console.width, title="schedules")
    console.print(table)
    if dropped:
        console.print(dropped_note(dropped, console.width))
    if others:
        console.print(
            f"* not declared in {schedules_file or DEFAULT_FILE} nor by --pipelines code, "
            "known from the log (its decisions) or a pause: pass --schedules FILE or "
            "--pipelines CODE declaring it for its cron and next tick",
            markup=False,
        )
    console.print("every decision: `sisas signals sch-NAME`")


async def _check_known(
    bus: Bus, name: str, schedules_file: str | None, pipeline_specs: tuple[str, ...]
) -> None:
    """Exit 2 unless schedule ``name`` is known: declared in the schedules file or by the
    loaded pipelines, paused, or with decisions in the log (its chain ``sch-NAME``). The
    error names the known schedules and how to point at the file."""
    check_name(name, "schedule name")
    declared = [s.name for s in load_schedules(schedules_file, load_pipelines(pipeline_specs))]
    if name in declared:
        return
    paused = await paused_schedules(bus)
    if name in paused or await bus.log.last_of_run(schedule_chain(name)) is not None:
        return
    known = sorted({*declared, *paused})
    listed = f"known schedules: {', '.join(known)}" if known else "no schedule is known here"
    fail(
        f"no schedule {name!r}: {schedules_file or DEFAULT_FILE} and the pipelines loaded "
        f"declare none by that name, none is paused, the log holds no decision of it "
        f"({listed}); check the name, or pass --schedules FILE ([[schedule]] tables) or "
        "--pipelines CODE declaring it"
    )


@schedules.command("pause")
@click.argument("name")
@click.option("--note", default="", help="Why: recorded in each skipped tick's reason.")
@SCHEDULES_OPTION
@PIPELINES_OPTION
@JSON_OPTION
@run_async
async def pause(
    name: str,
    note: str,
    schedules_file: str | None,
    pipeline_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Pause schedule NAME: its ticks are recorded as skipped until it is resumed.

    Exit 2 when no schedule NAME is known (not in the schedules file, not declared by
    --pipelines code, never ticked)."""
    async with open_bus(load_settings(), name="sisas-schedules") as bus:
        await _check_known(bus, name, schedules_file, pipeline_specs)
        before = await pause_schedule(bus, name, by=_operator(), note=note)
    if as_json:
        print(json.dumps({"schedule": name, "paused": True, "already": before is not None}))
    elif before is not None:
        console.print(f"{name} was paused already ({before.text()})", markup=False)
    else:
        console.print(
            f"paused {name}: its ticks are recorded as skipped; "
            f"`sisas schedules resume {name}` to go on"
        )


@schedules.command("resume")
@click.argument("name")
@SCHEDULES_OPTION
@PIPELINES_OPTION
@JSON_OPTION
@run_async
async def resume(
    name: str, schedules_file: str | None, pipeline_specs: tuple[str, ...], as_json: bool
) -> None:
    """Resume schedule NAME from its next tick (ticks while paused stay skipped).

    Exit 1 when it was not paused, 2 when no schedule NAME is known.
    """
    async with open_bus(load_settings(), name="sisas-schedules") as bus:
        await _check_known(bus, name, schedules_file, pipeline_specs)
        lifted = await resume_schedule(bus, name)
    if as_json:
        print(json.dumps({"schedule": name, "resumed": lifted is not None}))
    if lifted is None:
        if not as_json:
            err_console.print(
                f"{name} is not paused: nothing to resume (`sisas schedules list` shows which are)"
            )
        sys.exit(1)
    if not as_json:
        console.print(f"resumed {name} (it was paused {lifted.text()})", markup=False)


def _after(text: str, zone: ZoneInfo, now: datetime) -> datetime:
    """--after: a time (naive: in ``zone``) or a span back from ``now``."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            return parse_since(text, now)
        except UsageError:
            raise UsageError(
                f"--after {text!r} is not a time: write 2026-03-29T00:00 (read in "
                "--timezone) or 2026-03-29T00:00Z"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)


@schedules.command("test")
@click.argument("expr")
@click.option("--timezone", "-z", default="UTC", show_default=True, help="An IANA time zone.")
@click.option("--count", "-n", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option(
    "--after",
    default=None,
    help="Start from this time (default now): 2026-11-01T12:00 (in --timezone) or "
    "2026-11-01T12:00Z.",
)
@JSON_OPTION
def test_expression(expr: str, timezone: str, count: int, after: str | None, as_json: bool) -> None:
    """Print the next ticks of the cron expression EXPR (5 fields, or 6 with seconds
    first), in --timezone, after --after (a time without an offset is read in
    --timezone). Exit 2 for a bad expression, zone or time."""
    zone = check_zone(timezone)
    check_cron(expr, zone)
    now = datetime.now(UTC)
    start = _after(after, zone, now) if after else now
    ticks = [t.isoformat() for t in next_ticks(expr, timezone, start, count)]
    if as_json:
        print(json.dumps({"cron": expr, "timezone": timezone, "ticks": ticks}))
        return
    console.print(f"next {count} ticks of {expr} in {timezone}:", markup=False)
    for t in ticks:
        console.print(f"  {t}")


@schedules.command("run")
@SCHEDULES_OPTION
@PIPELINES_OPTION
@run_async
async def run_schedules(schedules_file: str | None, pipeline_specs: tuple[str, ...]) -> None:
    """Decide schedule ticks until Ctrl-C (`sisas up --schedules FILE` does it too); run as
    many as you like: each tick is decided once."""
    local = load_pipelines(pipeline_specs)
    found = load_schedules(schedules_file, local)
    if not found:
        fail(f"no schedules found: {FIX}")
    stop = stop_on_signals()
    async with open_bus(load_settings(), name="sisas-scheduler") as bus:
        service = ScheduleService(bus, found)
        await service.start()
        names = ", ".join(f"{s.name} ({s.cron} -> {s.pipeline})" for s in found)
        console.print(f"schedules: {names}; Ctrl-C to stop")
        known = set(local) | set(await PlanRegistry(bus.js).names())
        for s in found:
            if s.pipeline not in known:  # each tick would start a run that fails
                err_console.print(
                    f"note: schedule {s.name} runs {s.pipeline!r}, which no worker has "
                    f"registered (known: {', '.join(sorted(known)) or 'none'}): its runs "
                    f"fail until one does (`sisas worker --pipelines CODE`); check the "
                    f"name, or `sisas schedules pause {s.name}`",
                    markup=False,
                )
        await service.run(stop)
    ticks, runs = service.decided, service.started
    err_console.print(
        f"stopped: {ticks} tick{'s' * (ticks != 1)} decided, {runs} run{'s' * (runs != 1)} asked"
    )
