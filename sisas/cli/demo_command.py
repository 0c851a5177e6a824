"""``sisas demo``: a guided tour on the embedded server.

Until the pipeline runner lands, the tour exercises the signal log itself: it appends
the signals of an example run through the real bus, shows that a retried append is
deduplicated and a rival writer is rejected, and verifies the run's hash chain.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, load_settings, run_async
from sisas.errors import AppendConflict
from sisas.signals import (
    ChainHead,
    ContractChecked,
    Draft,
    InvariantChecked,
    PhaseCompleted,
    PhaseScheduled,
    PhaseStarted,
    RunCompleted,
    RunRequested,
    RunStarted,
    StoredSignal,
    semantic_digest,
    verify_chain,
)

__all__ = ["demo"]

PHASES = ("ingest", "clean", "cluster", "report")


def _example_run(at: datetime, seed: int) -> list[Draft]:
    """The drafts of an example run, phase by phase (what the orchestrator will decide)."""
    drafts = [
        Draft(body=RunRequested(seed=seed, requested_by="sisas demo"), at=at),
        Draft(
            body=RunStarted(
                pipeline_version="0.1.0",
                fingerprint=semantic_digest(PHASES),
                seed=seed,
                phases=list(PHASES),
            ),
            at=at,
        ),
    ]
    outputs: dict[str, str] = {}
    for name in PHASES:
        digest = semantic_digest({"phase": name, "seed": seed})
        outputs[name] = digest
        drafts += [
            Draft(body=PhaseScheduled(seed=seed), phase=name, at=at),
            Draft(body=PhaseStarted(worker="demo"), phase=name, at=at),
            Draft(
                body=ContractChecked(contract=f"{name}.In", boundary="entry", passed=True),
                phase=name,
                at=at,
            ),
            Draft(body=PhaseCompleted(output_digest=digest, duration=0.05), phase=name, at=at),
            Draft(
                body=ContractChecked(contract=f"{name}.Out", boundary="exit", passed=True),
                phase=name,
                at=at,
            ),
        ]
        if name == "cluster":
            drafts.append(
                Draft(
                    body=InvariantChecked(
                        invariant="INV-7.1",
                        description="cluster weights sum to 1.0",
                        passed=True,
                        observed=1.0,
                        expected=1.0,
                    ),
                    phase=name,
                    at=at,
                )
            )
    drafts.append(
        Draft(body=RunCompleted(fingerprint=semantic_digest(outputs), outputs=outputs), at=at)
    )
    return drafts


@cli.command()
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the example run.")
@run_async
async def demo(seed: int) -> None:
    """A five-minute tour: append a run's signals, retry, race, verify, and look around."""
    settings = load_settings()
    run_id = f"demo-{secrets.token_hex(4)}"  # the edge may use randomness; the core never does
    console.print(
        f"[bold]sisas demo[/]: run [cyan]{run_id}[/] on "
        + ("the embedded server" if settings.embedded else settings.nats_url or "")
    )
    async with open_bus(settings, name="sisas-demo") as bus:
        console.print(f"server {bus.url}; data folder {settings.home}")
        drafts = _example_run(datetime.now(UTC), seed)
        head, last = ChainHead(pipeline="demo", run_id=run_id), 0
        started = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("appending signals", total=len(drafts))
            for draft in drafts:
                sealed, head = head.extend([draft])
                last = (await bus.log.append(sealed, expected_last_seq=last)).last_seq
                progress.update(
                    task, advance=1, description=f"{draft.phase or 'run':<8} {sealed[0].kind}"
                )
                await asyncio.sleep(0.03)  # slow enough to watch with `sisas tail`
        elapsed = time.perf_counter() - started

        records = await bus.log.read_run(run_id)
        signals = [r.signal for r in records if isinstance(r, StoredSignal)]
        retry = await bus.log.append(signals[-3:], expected_last_seq=records[-4].stream_seq)
        rival, _ = ChainHead.after(signals[-2]).extend(
            [Draft(body=RunCompleted(fingerprint="forged"), at=signals[-1].at)]
        )
        try:
            await bus.log.append(rival, expected_last_seq=records[-2].stream_seq)
            rejected = "NOT rejected (this is a bug)"
        except AppendConflict as exc:
            rejected = f"rejected: {exc}"
        issues = verify_chain(signals, run_id=run_id)

    table = Table.grid(padding=(0, 2))
    table.add_row(
        "signals",
        f"{len(signals)} appended in {elapsed:.2f}s, stream seq "
        f"{records[0].stream_seq}..{records[-1].stream_seq}",
    )
    table.add_row("retried append", f"{retry.duplicates} of 3 deduplicated, nothing written twice")
    table.add_row("rival writer", rejected)
    table.add_row("hash chain", "[green]intact[/]" if not issues else f"[red]{issues}[/]")
    table.add_row("head hash", signals[-1].hash)
    console.print(table)
    console.print("\n[bold]where to look next[/]")
    hints = [
        (f"sisas signals {run_id}", "every signal of this run, chain verified"),
        (f"sisas signals {run_id} --json", "the same, exactly as on the wire"),
        ("sisas tail --all", "the whole log; leave it open beside another demo"),
        ("sisas schema export schemas/", "JSON Schemas to decode the log in any language"),
        ("sisas up", "keep a server running between commands"),
    ]
    width = max(len(cmd) for cmd, _ in hints) + 3
    for cmd, what in hints:
        console.print(f"  [cyan]{cmd:<{width}}[/]{what}")
