"""`sisas cluster up|down|status|kill|restart`: a JetStream cluster on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
from rich.table import Table

from sisas.bus.cluster import LocalCluster
from sisas.cli.app import cli, console, fail, load_settings, run_async
from sisas.signals.names import INPUT_STREAM, LOG_STREAM

__all__ = ["cluster"]


@cli.group()
def cluster() -> None:
    """A JetStream cluster of nats-servers on this machine (for trying clustered mode).

    \b
    sisas cluster up --nodes 3        start it; prints the SISAS_NATS_URL to export
    sisas cluster status              nodes, and which node leads each stream
    sisas cluster kill --leader       SIGKILL the log's leader: watch runs fail over
    sisas cluster restart n2          bring a killed node back (same ports and store)
    sisas cluster down                stop every node

    Production clusters: see deploy/ and docs/operations.md.
    """


def _loaded() -> LocalCluster:
    found = LocalCluster.load(load_settings().home)
    if found is None or not found.running():
        fail("no local cluster runs for this data folder: start one with `sisas cluster up`")
    return found


@cluster.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--sync",
    default="always",
    show_default=True,
    help="JetStream sync_interval of every node (always, or a duration like 1s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@run_async
async def up(nodes: int, sync: str, as_json: bool) -> None:
    """Start NODES nats-servers on 127.0.0.1 as one JetStream cluster, in the background.

    Their configs, logs and stores are in SISAS_HOME/cluster/. Export the printed
    SISAS_NATS_URL (and SISAS_REPLICAS) and every sisas command uses the cluster:
    streams get that many replicas.
    """
    local = LocalCluster(load_settings().home, nodes=nodes, sync=sync)
    await asyncio.to_thread(local.start)
    try:
        await local.wait_jetstream()
    except Exception:
        local.stop()
        raise
    replicas = min(3, nodes) if nodes != 2 else 1
    data = {
        "nodes": [{"name": n.name, "url": n.url, "pid": n.pid} for n in local.nodes],
        "env": {"SISAS_NATS_URL": local.urls, "SISAS_REPLICAS": str(replicas)},
        "folder": str(local.folder),
    }
    if as_json:
        print(json.dumps(data))
        return
    console.print(f"cluster of {nodes} up ({local.folder}):")
    for n in local.nodes:
        console.print(f"  {n.name}  {n.url}  pid {n.pid}")
    console.print("use it from this shell:")
    console.print(f"  export SISAS_NATS_URL={local.urls} SISAS_REPLICAS={replicas}")
    console.print(
        "then `sisas up --pipelines ...` (on one or several machines); stop it with "
        "`sisas cluster down`"
    )


@cluster.command()
@run_async
async def down() -> None:
    """Stop every node of the local cluster (a clean shutdown)."""
    local = _loaded()
    await asyncio.to_thread(local.stop)
    console.print(f"stopped {len(local.nodes)} nodes")


@cluster.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@run_async
async def status(as_json: bool) -> None:
    """The nodes (running, stopped), and which node leads each sisas stream."""
    local = LocalCluster.load(load_settings().home)
    if local is None:
        fail("no local cluster for this data folder: start one with `sisas cluster up`")
    leaders: dict[str, str] = {}
    running = local.running()
    if running:
        nc = await local.connect()
        try:
            for stream in (LOG_STREAM, INPUT_STREAM):
                leaders[stream] = await local.stream_leader(nc, stream)
        finally:
            await nc.close()
    data: dict[str, Any] = {
        "nodes": [
            {"name": n.name, "url": n.url, "pid": n.pid, "running": n in running}
            for n in local.nodes
        ],
        "leaders": leaders,
        "SISAS_NATS_URL": local.urls,
    }
    if as_json:
        print(json.dumps(data))
        return
    table = Table(title=f"local cluster ({local.folder})", title_justify="left")
    for col in ("node", "url", "pid", "state", "leads"):
        table.add_column(col)
    for n in local.nodes:
        leads = ", ".join(s for s, leader in leaders.items() if leader == n.name)
        state = "[green]running[/]" if n in running else "[red]stopped[/]"
        table.add_row(n.name, n.url, str(n.pid), state, leads)
    console.print(table)


@cluster.command()
@click.argument("node", required=False)
@click.option("--leader", is_flag=True, help=f"Kill the node leading {LOG_STREAM}.")
@run_async
async def kill(node: str | None, leader: bool) -> None:
    """SIGKILL NODE (or --leader): a crash, for watching sisas fail over."""
    local = _loaded()
    if leader == bool(node):
        fail("name a NODE or pass --leader (not both)")
    if leader:
        nc = await local.connect()
        try:
            node = await local.stream_leader(nc, LOG_STREAM)
        finally:
            await nc.close()
        if not node:
            fail(f"{LOG_STREAM} has no leader right now (does it exist? run `sisas status`)", 1)
    assert node is not None
    local.kill(node)
    console.print(f"killed {node}; `sisas cluster restart {node}` brings it back")


@cluster.command()
@click.argument("node")
@run_async
async def restart(node: str) -> None:
    """Start NODE again after `kill` (same ports and store); it catches up by itself."""
    local = LocalCluster.load(load_settings().home)
    if local is None:
        fail("no local cluster for this data folder: start one with `sisas cluster up`")
    await asyncio.to_thread(local.restart, node)
    console.print(f"{node} is back at {local.node(node).url}")
