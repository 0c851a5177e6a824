"""``sisas up``, ``sisas down``, ``sisas status``: the server and the streams."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.panel import Panel
from rich.table import Table

from sisas.bus.connection import redact
from sisas.bus.embedded import running_server
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async, stop_on_signals
from sisas.cli.dashboard_process import DashboardProcess, dashboard_process
from sisas.cli.schedule_commands import load_schedules
from sisas.cli.trigger_commands import load_rules
from sisas.dashboard.server import DEFAULT_PORT
from sisas.dashboard.sessions import ActionPolicy
from sisas.errors import EmbeddedServerError, UsageError
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.services.schedules import ScheduleService
from sisas.services.triggers import TriggerService
from sisas.signals.names import INPUT_STREAM, LOG_STREAM, WORK_STREAM

__all__ = ["down", "status", "up"]


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Client port of the embedded server (default SISAS_PORT, or any free port).",
)
@click.option(
    "--pipelines",
    "pipeline_specs",
    multiple=True,
    envvar="SISAS_PIPELINES",
    help="Pipeline code for the built-in worker: a module or a .py file. Repeatable.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=2,
    show_default=True,
    help="Phases the built-in worker runs at once.",
)
@click.option(
    "--no-handlers",
    is_flag=True,
    help="Only the server and streams: no orchestrator, no worker, no projector.",
)
@click.option(
    "--no-projector",
    is_flag=True,
    help="No projector here (another machine folds the log and answers queries).",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    envvar="SISAS_DASHBOARD_PORT",
    show_default=True,
    help="Port of the web dashboard on 127.0.0.1 (0: any free port).",
)
@click.option("--no-dashboard", is_flag=True, help="Do not serve the web dashboard.")
@click.option(
    "--dashboard-actions",
    is_flag=True,
    help="Let a signed-in operator launch, cancel and re-execute runs from the dashboard "
    "(as `sisas dashboard --allow-actions`).",
)
@click.option(
    "--triggers",
    "rules_file",
    default=None,
    help="Trigger rules (TOML): also run the trigger service (see `sisas triggers`).",
)
@click.option(
    "--schedules",
    "schedules_file",
    default=None,
    help="Schedules (TOML): also run the scheduler (see `sisas schedules`); schedules "
    "the --pipelines declare run without it.",
)
@click.option(
    "--reload",
    is_flag=True,
    help="The worker watches the --pipelines files; changed code runs from the next attempt.",
)
@run_async
async def up(
    port: int | None,
    pipeline_specs: tuple[str, ...],
    concurrency: int,
    no_handlers: bool,
    no_projector: bool,
    dashboard_port: int,
    no_dashboard: bool,
    dashboard_actions: bool,
    rules_file: str | None,
    schedules_file: str | None,
    reload: bool,
) -> None:
    """Start sisas and keep it running until Ctrl-C.

    Starts nats-server with JetStream on 127.0.0.1, its store in the data folder
    (./.sisas or SISAS_HOME), creates or verifies the streams and the artifact bucket,
    runs an orchestrator, the projector (DuckDB in the data folder, answering `sisas runs`,
    `show`, `stats`... for every machine) and (with --pipelines) a worker in this
    process, prints the URL and stays up. Other sisas commands find it through the data folder. With
    SISAS_NATS_URL set, nothing is spawned: the streams on that server are created or
    verified instead, and the handlers run against it.
    """
    settings = load_settings()
    pipes = {} if no_handlers else load_pipelines(pipeline_specs)
    rules = load_rules(rules_file) if rules_file else []
    timed = [] if no_handlers else load_schedules(schedules_file, pipes, default=False)
    if port is not None:
        settings = replace(settings, port=port)
    if settings.embedded:
        other = running_server(settings.home)
        if other is not None:
            fail(
                f"sisas is already up for {settings.home} at {other.url} (nats-server pid "
                f"{other.pid}): every sisas command uses it; stop it with `sisas down`"
            )
    stop = stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        bus = await _open_for_up(stack, settings, "SISAS_PORT" if port is None else "--port")
        if bus.server is None and not settings.embedded:
            stack.enter_context(registered_up(settings.home, bus.url))
        grid = Table.grid(padding=(0, 2))
        grid.add_row("url", f"[bold]{redact(bus.url)}[/]")
        if bus.server is not None:
            grid.add_row("data folder", str(bus.server.home))
            grid.add_row(
                "server",
                f"nats-server pid {bus.server.pid}, sync_interval "
                f"{settings.sync}, log {bus.server.log_path}",
            )
        grid.add_row("replicas", str(settings.replicas))
        if bus.provisioned.created:
            grid.add_row("created", ", ".join(bus.provisioned.created))
        if bus.provisioned.verified:
            grid.add_row("verified", ", ".join(bus.provisioned.verified))
        if no_handlers:
            handlers_text = "none (--no-handlers)"
        else:
            parts = ["orchestrator"]
            if not no_projector:
                parts.append("projector")
            parts.append(
                f"worker for {', '.join(sorted(pipes))}"
                if pipes
                else "no worker (pass --pipelines)"
            )
            handlers_text = ", ".join(parts)
        grid.add_row("handlers", handlers_text)
        policy = ActionPolicy.for_settings(bus.settings, allow=dashboard_actions)
        web = (
            contextlib.nullcontext(DashboardProcess())
            if no_dashboard or no_handlers
            else dashboard_process(
                port=dashboard_port,
                allow_actions=dashboard_actions,
                sign_in=policy.mode == "token",
                port_fix="pass --dashboard-port N (0: any free port) or --no-dashboard",
            )
        )
        handlers = (
            contextlib.nullcontext(asyncio.Event())
            if no_handlers
            else running_services(
                bus, pipes, concurrency=concurrency, projector=not no_projector, reload=reload
            )
        )
        async with handlers as stop_handlers, web as served:
            url = served.url
            if url:
                live = "live" if policy.mode != "off" else "read-only, live"
                grid.add_row("dashboard", f"[bold]{url}[/] ({live}, pid {served.pid})")
                # the child says how `sisas dashboard` turns actions on; up's flag differs
                grid.add_row(
                    "actions",
                    served.actions.replace("--allow-actions", "--dashboard-actions"),
                )
            else:
                why = "--no-dashboard" if no_dashboard else "--no-handlers"
                grid.add_row("dashboard", f"off ({why})")
            if rules:
                service = TriggerService(bus, rules)
                await service.start()
                trigger_task = asyncio.create_task(service.run(stop_handlers))
                listed = ", ".join(f"{r.subject} -> {r.pipeline}" for r in rules)
                grid.add_row("triggers", listed)
            if timed:
                scheduler = ScheduleService(bus, timed)
                await scheduler.start()
                schedule_task = asyncio.create_task(scheduler.run(stop_handlers))
                grid.add_row("schedules", ", ".join(f"{t.name} ({t.cron})" for t in timed))
            grid.add_row(
                "next",
                f"other processes here find it via {settings.home}; `sisas tail` or "
                "`sisas watch` to watch; Ctrl-C or `sisas down` to stop "
                "(listens on 127.0.0.1 only)",
            )
            console.print(Panel(grid, title="sisas is up", title_align="left", expand=False))
            if served.sign_in:
                console.print(f"operator sign-in: {served.sign_in}", soft_wrap=True)
            while not stop.is_set():
                if bus.server is not None and not bus.server.alive:
                    fail(f"nats-server exited unexpectedly: {bus.server.log_tail()}", 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            err_console.print("stopping…")
            if rules or timed:
                stop_handlers.set()
            if rules:
                await trigger_task
            if timed:
                await schedule_task
    err_console.print("stopped cleanly")


async def _open_for_up(stack: contextlib.AsyncExitStack, settings: Settings, given: str) -> Bus:
    """The bus of ``sisas up``, entered on ``stack``. A client port already in use is a
    usage error naming the option it came from (``--port`` or ``SISAS_PORT``), not the
    nats-server log."""
    try:
        return await stack.enter_async_context(open_bus(settings, name="sisas-up"))
    except EmbeddedServerError as exc:
        if settings.port and "address already in use" in str(exc).lower():
            if given == "--port":
                raise UsageError(
                    f"port {settings.port} is in use: pass --port N (0 = any free port)"
                ) from None
            raise UsageError(
                f"port {settings.port} (SISAS_PORT) is in use: set SISAS_PORT to another port "
                "or pass --port N (0 = any free port)"
            ) from None
        raise


UP_FOLDER = "up"
"""In the data folder: one ``<pid>.json`` per ``sisas up`` against ``SISAS_NATS_URL``
(an embedded one is known by ``server.json``), flock-ed by that process while it runs."""


@contextlib.contextmanager
def registered_up(home: Path, url: str) -> Iterator[Path]:
    """While inside, this ``sisas up`` (which spawned no server, so wrote no server.json)
    is listed in ``home/up/`` for ``sisas down`` to find and stop. Its file is locked
    for as long as this process lives: one left by a killed process is ignored."""
    folder = home / UP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}.json"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": os.getpid(), "url": redact(url)}).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def registered_ups(home: Path) -> dict[int, str]:
    """pid -> url of every running ``sisas up`` listed in ``home/up/``; the files of
    processes that are gone are removed."""
    found: dict[int, str] = {}
    for path in sorted((home / UP_FOLDER).glob("*.json")):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process holds it: it runs
            url = ""
            with contextlib.suppress(OSError, ValueError, KeyError):  # may be writing it now
                url = str(json.loads(path.read_text())["url"])
            if path.stem.isdecimal():
                found[int(path.stem)] = url
        else:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return found


@cli.command()
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for a clean stop.",
)
def down(timeout: float) -> None:
    """Stop what `sisas up` started for this data folder: its embedded server and
    services, or (with SISAS_NATS_URL) its services; a NATS server sisas did not
    start keeps running."""
    settings = load_settings()
    server = running_server(settings.home)
    ups = registered_ups(settings.home)
    if server is None and not ups:
        console.print(f"nothing is running for {settings.home}")
        return
    targets = [server.owner or server.pid] if server is not None else []
    targets += [pid for pid in ups if pid not in targets]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_server(settings.home) is not None or registered_ups(settings.home):
        if time.monotonic() > deadline:
            last = f" (nats-server pid {server.pid} as a last resort)" if server else ""
            fail(
                f"{', '.join(f'pid {p}' for p in targets)} did not stop within "
                f"{timeout:.0f}s: check it, then kill it{last}",
                1,
            )
        time.sleep(0.1)
    if server is not None:
        console.print(f"stopped the server at {server.url}")
    for pid, url in ups.items():
        console.print(
            f"stopped sisas up (pid {pid}) on {url or 'SISAS_NATS_URL'}; that NATS server "
            "keeps running (sisas did not start it)"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@run_async
async def status(as_json: bool) -> None:
    """Where the server is and what the streams hold (starts it briefly if needed)."""
    settings = load_settings()
    already = running_server(settings.home) if settings.embedded else None
    async with open_bus(settings, name="sisas-status") as bus:
        streams: dict[str, Any] = {}
        for name in (LOG_STREAM, INPUT_STREAM, WORK_STREAM):
            info = await bus.js.stream_info(name)
            streams[name] = {
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_seq": info.state.first_seq,
                "last_seq": info.state.last_seq,
                "replicas": info.config.num_replicas,
            }
        data = {
            "url": redact(bus.url),
            "mode": "embedded" if settings.embedded else "external",
            "running": bool(already) or not settings.embedded,
            "home": str(settings.home),
            "config_verified": True,
            "streams": streams,
        }
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=f"sisas at {data['url']} ({data['mode']})", title_justify="left")
    for col in ("stream", "messages", "bytes", "first seq", "last seq", "replicas"):
        table.add_column(col, justify="right" if col != "stream" else "left")
    for name, st in streams.items():
        table.add_row(
            name,
            str(st["messages"]),
            str(st["bytes"]),
            str(st["first_seq"]),
            str(st["last_seq"]),
            str(st["replicas"]),
        )
    console.print(table)
    if settings.embedded and not already:
        console.print(
            "[dim]no server was running: started one for this command; "
            "`sisas up` keeps one running[/]"
        )
