"""``sisas up``, ``sisas down``, ``sisas status``: the server and the streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import replace
from typing import Any

import click
from rich.panel import Panel
from rich.table import Table

from sisas.bus.connection import redact
from sisas.bus.embedded import running_server
from sisas.bus.runtime import open_bus
from sisas.bus.services import running_services
from sisas.bus.streams import INPUT_STREAM, LOG_STREAM
from sisas.bus.triggers import TriggerService
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.trigger_commands import load_rules
from sisas.dashboard.server import DEFAULT_PORT, serving_dashboard
from sisas.loader import load_pipelines

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
    "--triggers",
    "rules_file",
    default=None,
    help="Trigger rules (TOML): also run the trigger service (see `sisas triggers`).",
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
    rules_file: str | None,
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
    if port is not None:
        settings = replace(settings, port=port)
    if settings.embedded:
        other = running_server(settings.home)
        if other is not None:
            fail(
                f"sisas is already up for {settings.home} at {other.url} (nats-server pid "
                f"{other.pid}): every sisas command uses it; stop it with `sisas down`"
            )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_bus(settings, name="sisas-up") as bus:
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
        web = (
            contextlib.nullcontext("")
            if no_dashboard or no_handlers
            else serving_dashboard(
                bus,
                port=dashboard_port,
                port_fix="pass --dashboard-port N (0: any free port) or --no-dashboard",
            )
        )
        handlers = (
            contextlib.nullcontext(asyncio.Event())
            if no_handlers
            else running_services(bus, pipes, concurrency=concurrency, projector=not no_projector)
        )
        async with handlers as stop_handlers, web as url:
            if url:
                grid.add_row("dashboard", f"[bold]{url}[/] (read-only, live)")
            if rules:
                service = TriggerService(bus, rules)
                await service.start()
                trigger_task = asyncio.create_task(service.run(stop_handlers))
                listed = ", ".join(f"{r.subject} -> {r.pipeline}" for r in rules)
                grid.add_row("triggers", listed)
            grid.add_row(
                "next",
                f"other processes here find it via {settings.home}; `sisas tail` or "
                "`sisas watch` to watch; Ctrl-C to stop (listens on 127.0.0.1 only)",
            )
            console.print(Panel(grid, title="sisas is up", title_align="left", expand=False))
            while not stop.is_set():
                if bus.server is not None and not bus.server.alive:
                    fail(f"nats-server exited unexpectedly: {bus.server.log_tail()}", 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            err_console.print("stopping…")
            if rules:
                stop_handlers.set()
                await trigger_task
    err_console.print("stopped cleanly")


@cli.command()
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for a clean stop.",
)
def down(timeout: float) -> None:
    """Stop the sisas server that serves this data folder (started by `sisas up`)."""
    settings = load_settings()
    server = running_server(settings.home)
    if server is None:
        console.print(f"nothing is running for {settings.home}")
        return
    target = server.owner or server.pid
    os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_server(settings.home) is not None:
        if time.monotonic() > deadline:
            fail(
                f"pid {target} did not stop within {timeout:.0f}s: check it, then "
                f"`kill {server.pid}` (nats-server) as a last resort",
                1,
            )
        time.sleep(0.1)
    console.print(f"stopped the server at {server.url}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@run_async
async def status(as_json: bool) -> None:
    """Where the server is and what the streams hold (starts it briefly if needed)."""
    settings = load_settings()
    already = running_server(settings.home) if settings.embedded else None
    async with open_bus(settings, name="sisas-status") as bus:
        streams: dict[str, Any] = {}
        for name in (LOG_STREAM, INPUT_STREAM):
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
