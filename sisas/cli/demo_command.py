"""``sisas demo``: the example clustering pipeline, run on the embedded server."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sisas.bus.registry import load_pipelines
from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, fail, load_settings, run_async
from sisas.cli.run_commands import print_result, start_and_watch
from sisas.replay.verify import LogVerifier, report
from sisas.signals import ContractChecked, InvariantChecked, StoredSignal

__all__ = ["demo"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@cli.command()
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the run.")
@run_async
async def demo(seed: int) -> None:
    """Run the example pipeline with live progress, verify its log, say where to look next.

    The pipeline (examples/clustering.py): load -> clean (fails once, then retried) ->
    score (fanned out over every value) -> cluster (invariant INV-7.1, in a child process
    with a timeout) -> report; `publish` has side effects and stays off.
    """
    source, data = EXAMPLES / "clustering.py", EXAMPLES / "data" / "points.json"
    if not source.is_file() or not data.is_file():
        fail(f"the demo needs the examples/ folder of a sisas checkout ({source} is missing)")
    settings = load_settings()
    console.print(
        f"[bold]sisas demo[/]: pipeline [cyan]clustering[/] from {source} on "
        + ("the embedded server" if settings.embedded else str(settings.nats_url))
    )
    local = load_pipelines([str(source)], entry_points=False)
    result, elapsed = await start_and_watch(
        "clustering",
        data.read_bytes(),
        seed=seed,
        config={"clean.flaky": True},
        idempotency_key=None,
        wait=True,
        as_json=False,
        local=local,
        requested_by="sisas demo",
    )
    assert result is not None
    print_result(result, False, elapsed)
    async with open_bus(settings, name="sisas-demo") as bus:
        records = await bus.log.read_run(result.run_id)
    signals = [r.signal for r in records if isinstance(r, StoredSignal)]
    verified = report(LogVerifier(only=result.run_id).extend(records))
    contracts = sum(isinstance(s.body, ContractChecked) for s in signals)
    invariants = sum(isinstance(s.body, InvariantChecked) for s in signals)
    first = verified.first
    console.print(
        f"log: {len(signals)} signals, {contracts} contract checks, {invariants} "
        "invariant checks; verified (hashes, links, placement, refold): "
        + ("[green]intact[/]" if first is None else f"[red]NOT intact: {first.message}[/]")
    )
    console.print("\n[bold]where to look next[/]")
    rid = result.run_id
    hints = [
        (f"sisas signals {rid}", "every signal of the run, in order, chain verified"),
        (f"sisas show {rid}", "phases, attempts, durations, every contract and invariant"),
        (f"sisas manifest {rid}", "the run manifest: code fingerprint, seed, inputs, outputs"),
        ("sisas runs  /  sisas stats", "every run; per-phase percentiles, success, retries"),
        (f"sisas replay verify {rid}", "prove it intact: hashes, links, placement, refold"),
        (
            f"sisas replay rerun {rid} --pipelines examples/clustering.py",
            "prove it deterministic: rerun its phases, compare digests",
        ),
        (
            f"sisas audit {rid} --out audit-{rid[-6:]}",
            "a bundle with report.html; `sisas audit verify DIR` checks it offline",
        ),
        ("sisas up --pipelines examples/clustering.py", "keep a server, orchestrator, worker"),
        (
            "sisas run clustering --input examples/data/points.json --wait",
            "(in another shell) run it again on that server",
        ),
        ("sisas tail --all", "the whole log, live"),
        ("sisas schema export schemas/", "JSON Schemas to decode the log in any language"),
    ]
    width = max(len(c) for c, _ in hints) + 2
    for cmd, what in hints:
        console.print(f"  [cyan]{cmd:<{width}}[/]{what}")
    sys.exit(0 if result.status == "completed" and verified.intact else 1)
