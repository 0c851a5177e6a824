"""``sisas dashboard`` (the web page) and ``sisas watch`` (the same live view in a terminal)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any, Final

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sisas.bus.runtime import Bus, open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async, stop_on_signals
from sisas.cli.render import STATUS_STYLE
from sisas.client.queries import ask, projector_listening
from sisas.dashboard.detail import RunDetail
from sisas.dashboard.server import DEFAULT_PORT, serving_dashboard
from sisas.dashboard.sessions import ActionPolicy
from sisas.dashboard.views import run_view
from sisas.handlers.state import TERMINAL_RUN, RunState, evolve
from sisas.services.admission import waiting_note
from sisas.services.host import running_services
from sisas.signals import ENDING_KINDS, StoredSignal
from sisas.signals.names import check_name

__all__ = ["START_GRACE", "dashboard", "watch"]

START_GRACE: Final = 5.0
"""Seconds ``sisas watch RUN`` waits for a run the log does not hold yet (one just
requested) before it calls the id unknown."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    envvar="SISAS_DASHBOARD_PORT",
    show_default=True,
    help="Port (0: any free port).",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Let a signed-in operator launch, cancel and re-execute runs (with users on the "
    "server: the operator role's credentials; without: the token printed at start).",
)
@click.option(
    "--parent-pid",
    type=int,
    default=None,
    hidden=True,
    help="Stop when this process is gone (`sisas up` starts its dashboard so: a `sisas up` "
    "killed with SIGKILL must not leave it holding the port).",
)
@run_async
async def dashboard(host: str, port: int, allow_actions: bool, parent_pid: int | None) -> None:
    """Serve the live web dashboard until Ctrl-C (`sisas up` serves it too).

    Runs list and run pages (phase DAG, timeline of attempts, checks, retries and
    errors, audit report) kept live by server-sent events. Read-only unless
    --allow-actions: then an operator who signs in can launch a run, cancel one,
    re-execute one from its failure or re-run it (docs/dashboard.md). When no projector
    answers queries on this server, this process runs one.
    """
    stop = stop_on_signals()
    orphaned = asyncio.create_task(_stop_without_parent(parent_pid, stop)) if parent_pid else None
    async with open_bus(load_settings(), name="sisas-dashboard") as bus:
        policy = ActionPolicy.for_settings(bus.settings, allow=allow_actions)
        own = not await projector_listening(bus)
        services = (
            running_services(bus, {}, orchestrator=False, projector=True)
            if own
            else contextlib.nullcontext(asyncio.Event())
        )
        web = serving_dashboard(bus, host=host, port=port, policy=policy)
        async with services, web as url:
            where = "its own projector" if own else "the running projector"
            console.print(f"dashboard on [bold]{url}[/] ({where}; Ctrl-C to stop)")
            console.print(f"actions: {policy.describe(url)}", soft_wrap=True)
            if policy.sign_in_url(url):
                console.print(f"operator sign-in: {policy.sign_in_url(url)}", soft_wrap=True)
            await stop.wait()
    if orphaned is not None:
        orphaned.cancel()
    err_console.print("stopped")


async def _stop_without_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once ``parent_pid`` is no longer this process's parent (it died, even
    by SIGKILL, and this process was handed to another)."""
    while os.getppid() == parent_pid:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
        if stop.is_set():
            return
    err_console.print(f"sisas up (pid {parent_pid}) is gone: stopping its dashboard")
    stop.set()


def _phase_table(view: dict[str, Any]) -> Table:
    table = Table(title=f"{view['run_id']}  {view['pipeline']} {view['version']}", expand=False)
    for col in ("phase", "status", "attempts", "progress", "error"):
        table.add_column(col)
    for p in view["phases"]:
        items = p["items"]
        bar = ""
        if items:
            done = p["items_done"] or 0
            width = 20
            fill = round(width * done / items)
            bar = "█" * fill + "░" * (width - fill) + f" {done}/{items}"
        error = p["error"] or (f"skipped: {p['skip_reason']}" if p["skip_reason"] else "")
        style = STATUS_STYLE.get(p["status"], "")
        table.add_row(
            p["name"], Text(p["status"], style=style), str(p["attempts"]), bar, error or ""
        )
    return table


def _run_render(view: dict[str, Any]) -> Group:
    status = view["status"]
    head = Text.assemble(
        ("run ", ""),
        (status, STATUS_STYLE.get(status, "bold")),
        f"  seed {view['seed']}  {view['signals']} signals",
    )
    parts: list[Any] = [head, _phase_table(view)]
    checks, failed = view["checks"]["total"], view["checks"]["failed"]
    parts.append(
        Text(
            f"checks: {checks}, " + (f"{failed} failed" if failed else "all passed"),
            style="red" if failed else "green",
        )
    )
    for i in view["incidents"]["latest"][-6:]:
        item = "" if i["item"] is None else f"[{i['item']}]"
        parts.append(Text(f"  {i['kind']} {i['phase']}{item}: {i['summary']}", style="yellow"))
    if view["error"]:
        parts.append(Text(f"{view['error']} (phase {view['failed_phase']})", style="red"))
    return Group(*parts)


def _runs_render(runs: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="runs (live; Ctrl-C to stop)")
    for col in ("run", "pipeline", "status", "signals", "last"):
        table.add_column(col)
    for r in list(runs.values())[-25:][::-1]:
        table.add_row(
            r["run_id"],
            r["pipeline"],
            Text(r["status"], style=STATUS_STYLE.get(r["status"], "")),
            str(r["signals"]),
            r.get("last", ""),
        )
    return table


_ENDS = {
    "run_started": "running",
    "run_completed": "completed",
    "run_failed": "failed",
    "run_cancelled": "cancelled",
}


@cli.command()
@click.argument("run_id", required=False)
@click.option(
    "--wait-for-start",
    is_flag=True,
    help=f"Wait for RUN_ID however long it takes to appear (by default, a run the log "
    f"does not hold within {START_GRACE:.0f}s is an error: exit 2).",
)
@run_async
async def watch(run_id: str | None, wait_for_start: bool) -> None:
    """The live view in the terminal: one run's phases (RUN_ID), or every run.

    With RUN_ID it ends when the run ends: exit 0 completed, 1 failed or cancelled, 2
    when the log has no such run (after a few seconds' grace for a run just requested).
    """
    if run_id:
        check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-watch") as bus:
        if run_id:
            if not wait_for_start and not await _appears(bus, run_id, START_GRACE):
                if waiting := await waiting_note(bus, run_id):
                    err_console.print(f"[yellow]{waiting}; watching it once it starts[/]")
                    sys.exit(await _watch_one(bus, run_id))
                fail(
                    f"no run {run_id!r} in this log (nothing arrived in {START_GRACE:.0f}s): "
                    "check the run id (`sisas runs` lists them), or pass --wait-for-start "
                    "to wait for a run that has not started yet"
                )
            sys.exit(await _watch_one(bus, run_id))
        runs: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(Exception):
            answer = await ask(bus, "runs", {"limit": 25}, timeout=10)
            for r in reversed(answer.result):
                runs[r["run_id"]] = dict(r)
        start = await bus.log.last_seq() + 1
        try:
            await _watch_all(bus, runs, start)
        finally:
            _end_line()


async def _watch_all(bus: Bus, runs: dict[str, dict[str, Any]], start: int) -> None:
    """Show every run live as its signals arrive from ``start``, until cancelled."""
    with Live(_runs_render(runs), console=console, refresh_per_second=4) as live:
        async for record in bus.log.follow(from_seq=start, live=True):
            if not isinstance(record, StoredSignal):
                continue
            s = record.signal
            row = runs.setdefault(
                s.run_id,
                {"run_id": s.run_id, "pipeline": s.pipeline, "status": "requested", "signals": 0},
            )
            row["signals"] = s.seq
            row["status"] = _ENDS.get(s.kind, row["status"])
            row["last"] = f"{s.kind} {s.phase}".strip()
            live.update(_runs_render(runs))


async def _appears(bus: Bus, run_id: str, grace: float) -> bool:
    """Whether the log holds ``run_id``, or does within ``grace`` seconds."""
    deadline = asyncio.get_running_loop().time() + grace
    while await bus.log.last_of_run(run_id) is None:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.2)
    return True


WATCH_REFRESH: Final = 0.25
"""Seconds between two redraws of ``sisas watch RUN`` while signals arrive."""


async def _watch_one(bus: Bus, run_id: str) -> int:
    """Show ``run_id`` live until it ends; its exit code (0 completed, 1 otherwise).

    The view is rebuilt at most every :data:`WATCH_REFRESH` seconds and once at the end,
    not per signal: reading a finished run of 10,000 signals costs one pass over them
    (plus a few redraws), not one rebuild per signal."""
    # The run's fold and the page's detail grow with each signal (O(1) each), so a
    # redraw costs the bounded view, not a refold of every signal read so far.
    detail = RunDetail(state=RunState.new("", run_id))
    status = "requested"
    dirty = False
    with Live(Text(f"waiting for {run_id}…"), console=console, refresh_per_second=8) as live:

        def draw() -> str:
            nonlocal dirty
            dirty = False
            view = run_view(detail=detail)
            live.update(_run_render(view))
            return str(view["status"])

        async def redraw() -> None:
            while True:
                await asyncio.sleep(WATCH_REFRESH)
                if dirty:
                    draw()

        painter = asyncio.create_task(redraw())
        try:
            async with contextlib.aclosing(bus.log.follow_run(run_id)) as records:
                async for rec in records:
                    if not isinstance(rec, StoredSignal):
                        continue
                    if not detail.signals:  # as fold starts: the run's own pipeline
                        detail.state = RunState.new(rec.signal.pipeline, run_id)
                    detail.state = evolve(detail.state, rec.signal)
                    detail.add(rec.signal)
                    dirty = True
                    if rec.signal.kind in ENDING_KINDS and rec.last_in_message:
                        status = draw()
                        if status in TERMINAL_RUN:
                            break
        finally:
            painter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await painter
    _end_line()
    return 0 if status == "completed" else 1


def _end_line() -> None:
    """End a live view with a newline: rich adds one on a terminal only, and a shell
    prompt would otherwise follow its last line (piped, redirected)."""
    if not console.is_terminal:
        console.line()
