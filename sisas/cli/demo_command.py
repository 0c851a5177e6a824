"""``sisas demo``: the policy evaluation example, run on the embedded server."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, fail, load_settings, run_async
from sisas.cli.render import command_name
from sisas.cli.run_commands import print_result, start_and_watch
from sisas.loader import load_pipelines
from sisas.replay.rerun import plan_rerun
from sisas.replay.verify import LogVerifier, report
from sisas.signals import ContractChecked, InvariantChecked, PhaseCompleted, Signal, StoredSignal

__all__ = ["demo"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PIPELINE_SPEC = "examples.policy_evaluation"
BROKEN = "examples/policy_evaluation/data/broken_weights.json"


def _summary(outputs: dict[str, Any], signals: list[Signal]) -> None:
    """Score, clusters, invariants held (from the log), certificate."""
    agg, cert = outputs.get("aggregate"), outputs.get("certify")
    if agg:
        clusters = ", ".join(f"{c} {v:.2f}" for c, v in agg["clusters"].items())
        console.print(f"score [bold]{agg['score']:.3f}[/] of 3.0; clusters: {clusters}")
    held = {
        s.body.invariant: s.body.passed for s in signals if isinstance(s.body, InvariantChecked)
    }
    marks = [f"[green]{k} held[/]" if ok else f"[red]{k} FAILED[/]" for k, ok in held.items()]
    plain = [f"{k} held" if ok else f"{k} FAILED" for k, ok in held.items()]
    line, room = "invariants:", WIDTH - len("invariants:")
    for mark, text in zip(marks, plain, strict=True):
        if len(text) + 2 > room:  # a mark never breaks across lines
            console.print(line)
            line, room = "           ", WIDTH - 11
        line += f"  {mark}"
        room -= len(text) + 2
    console.print(line)
    if cert:
        console.print(
            f"certificate: {cert['contracts_valid']} of {cert['contracts']} contracts valid, "
            f"quality gate {cert['quality_passed']} passed, "
            f"{sum(cert['held'].values())}/{len(cert['held'])} gates held"
        )


WIDTH = 80
"""Columns the demo's text keeps to, whatever the terminal (a command may be longer)."""


def _hints(run_id: str, signals: list[Signal]) -> list[tuple[str, str]]:
    """(command, what it shows) for the run the demo made, as the user can type them."""
    prog = command_name()
    tasks = plan_rerun(signals).tasks
    chunks = sum(t.phase == "execute" for t in tasks)
    out = f"audit-{run_id[-6:]}"
    return [
        (f"{prog} signals {run_id}", "every signal of the run, in order, chain verified"),
        (f"{prog} show {run_id}", "phases, attempts, durations, every contract and invariant"),
        (f"{prog} manifest {run_id}", "the run manifest: code fingerprint, seed, inputs, outputs"),
        (f"{prog} runs; {prog} stats", "every run; per-phase percentiles, success, retries"),
        (f"{prog} replay verify {run_id}", "prove it intact: hashes, links, placement, refold"),
        (
            f"{prog} replay rerun {run_id} --pipelines {PIPELINE_SPEC} --workers 2",
            f"prove it deterministic: its {len(tasks)} attempts run again ({chunks} of them "
            "the chunks of the 300 contracts) on 2 worker processes, digests compared",
        ),
        (
            f"{prog} audit {run_id} --out {out}",
            f"a bundle with report.html; `{prog} audit verify {out}` checks it offline",
        ),
        (
            f"{prog} up --pipelines {PIPELINE_SPEC}",
            "keep a server, an orchestrator and a worker running, with the live dashboard "
            "on http://127.0.0.1:8765",
        ),
        (f"{prog} watch {run_id}", "the same live view in the terminal"),
        (
            f"{prog} run {PIPELINE_SPEC} --input {BROKEN} --wait",
            "exit 1: INV-7.1 fails, observed 1.1",
        ),
        (
            f"{prog} run examples.taxonomy --wait",
            "the other reference pipelines: examples.taxonomy, examples.script_lighting, "
            "examples.task_execution (each with a README in examples/)",
        ),
        (f"{prog} tail --all", "the whole log, live"),
        (f"{prog} schema export schemas/", "JSON Schemas to decode the log in any language"),
    ]


def _print_hints(hints: list[tuple[str, str]]) -> None:
    """Each command on a line of its own (never broken, to be copied whole), what it
    shows under it, wrapped to :data:`WIDTH`."""
    console.print("\n[bold]where to look next[/]")
    for cmd, what in hints:
        console.print(Text(f"  {cmd}", "cyan"))
        for line in textwrap.wrap(what, WIDTH - 6):
            console.print(Text(f"      {line}", "dim"))


@cli.command()
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the run.")
@run_async
async def demo(seed: int) -> None:
    """Run the policy evaluation example with live progress, verify its log, summarise it
    and say where to look next.

    The pipeline (examples/policy_evaluation/): 30 questions routed to methods, 300
    contracts carved and quality-gated, executed in 12 parallel chunks, aggregated into
    4 clusters and one score under invariants INV-7.1..7.5, recommendations, certificate.
    """
    folder = EXAMPLES / "policy_evaluation"
    source, data = folder / "pipeline.py", folder / "data" / "plan.json"
    if not source.is_file() or not data.is_file():
        fail(f"the demo needs the examples/ folder of a sisas checkout ({source} is missing)")
    settings = load_settings()
    console.print(
        "[bold]sisas demo[/]: [cyan]examples/policy_evaluation[/] on "
        + ("the embedded server" if settings.embedded else str(settings.nats_url))
    )
    local = load_pipelines([str(source)], entry_points=False)
    result, _ = await start_and_watch(
        "policy_evaluation",
        data.read_bytes(),
        seed=seed,
        config={},
        idempotency_key=None,
        wait=True,
        as_json=False,
        local=local,
        requested_by="sisas demo",
    )
    assert result is not None
    async with open_bus(settings, name="sisas-demo") as bus:
        records = await bus.log.read_run(result.run_id)
        signals = [r.signal for r in records if isinstance(r, StoredSignal)]
        outputs = {
            s.phase: json.loads(await bus.artifacts.get(s.body.artifact))
            for s in signals
            if isinstance(s.body, PhaseCompleted)
            and s.body.artifact
            and s.phase in ("aggregate", "certify")
        }
    took = (signals[-1].at - signals[0].at).total_seconds() if signals else None
    print_result(result, False, took, next_hint=False)  # as recorded: what show prints
    _summary(outputs, signals)
    verified = report(LogVerifier(only=result.run_id).extend(records))
    contracts = sum(isinstance(s.body, ContractChecked) for s in signals)
    invariants = sum(isinstance(s.body, InvariantChecked) for s in signals)
    first = verified.first
    console.print(
        f"log: {len(signals)} signals, {contracts} contract checks, {invariants} invariant checks"
    )
    console.print(
        "verified (hashes, links, placement, refold): "
        + ("[green]intact[/]" if first is None else f"[red]NOT intact: {first.message}[/]")
    )
    _print_hints(_hints(result.run_id, signals))
    sys.exit(0 if result.status == "completed" and verified.intact else 1)
