"""``sisas demo``: the policy evaluation example, run on the embedded server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, fail, load_settings, run_async
from sisas.cli.run_commands import print_result, start_and_watch
from sisas.loader import load_pipelines
from sisas.replay.verify import LogVerifier, report
from sisas.signals import ContractChecked, InvariantChecked, PhaseCompleted, Signal, StoredSignal

__all__ = ["demo"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PIPELINE_SPEC = "examples/policy_evaluation/pipeline.py"


def _summary(outputs: dict[str, Any], signals: list[Signal]) -> None:
    """Score, clusters, invariants held (from the log), certificate."""
    agg, cert = outputs.get("aggregate"), outputs.get("certify")
    if agg:
        clusters = ", ".join(f"{c} {v:.2f}" for c, v in agg["clusters"].items())
        console.print(f"score [bold]{agg['score']:.3f}[/] of 3.0; clusters: {clusters}")
    held = {
        s.body.invariant: s.body.passed for s in signals if isinstance(s.body, InvariantChecked)
    }
    marks = "  ".join(
        f"[green]{k} held[/]" if ok else f"[red]{k} FAILED[/]" for k, ok in held.items()
    )
    console.print(f"invariants: {marks}")
    if cert:
        console.print(
            f"certificate: {cert['contracts_valid']} of {cert['contracts']} contracts valid, "
            f"{cert['quality_passed']} passed the quality gate, "
            f"{sum(cert['held'].values())} of {len(cert['held'])} gates held"
        )


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
        f"[bold]sisas demo[/]: pipeline [cyan]policy_evaluation[/] from {folder} on "
        + ("the embedded server" if settings.embedded else str(settings.nats_url))
    )
    local = load_pipelines([str(source)], entry_points=False)
    result, elapsed = await start_and_watch(
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
    print_result(result, False, elapsed)
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
    _summary(outputs, signals)
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
            f"sisas replay rerun {rid} --pipelines {PIPELINE_SPEC} --workers 2",
            "prove it deterministic: rerun its 300 executors, compare digests",
        ),
        (
            f"sisas audit {rid} --out audit-{rid[-6:]}",
            "a bundle with report.html; `sisas audit verify DIR` checks it offline",
        ),
        (
            f"sisas up --pipelines {PIPELINE_SPEC}",
            "keep a server, orchestrator, worker; the live dashboard on http://127.0.0.1:8765",
        ),
        (f"sisas watch {rid}", "the same live view in the terminal"),
        (
            "sisas run examples.policy_evaluation --input "
            "examples/policy_evaluation/data/broken_weights.json --wait",
            "(in another shell) exit 1: INV-7.1 fails, observed 1.1",
        ),
        (
            "sisas run examples.taxonomy --wait",
            "the other reference pipelines: examples.taxonomy, examples.script_lighting,",
        ),
        ("", "examples.task_execution (each with a README in examples/)"),
        ("sisas tail --all", "the whole log, live"),
        ("sisas schema export schemas/", "JSON Schemas to decode the log in any language"),
    ]
    width = max(len(c) for c, _ in hints) + 2
    for cmd, what in hints:
        console.print(f"  [cyan]{cmd:<{width}}[/]{what}")
    sys.exit(0 if result.status == "completed" and verified.intact else 1)
