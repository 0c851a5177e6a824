"""``sisas batch``: many runs of one pipeline over many inputs, one summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sisas.bus.runtime import Bus, open_bus
from sisas.cli.app import cli, console, err_console, load_settings, run_async
from sisas.cli.progress import advise
from sisas.cli.run_commands import PIPELINES_OPTION, named_or_loaded
from sisas.cli.run_inputs import parse_set
from sisas.cli.tags import tag_option
from sisas.client.client import Client
from sisas.client.starting import check_settings
from sisas.errors import UsageError
from sisas.loader import load_pipelines
from sisas.services.hosting import (
    Hosting,
    check_live_code,
    hosting,
    interrupted_note,
    pipeline_plan,
)
from sisas.signals import RunCompleted, RunFailed, StoredSignal
from sisas.signals.kinds import ENDING_KINDS
from sisas.signals.names import parse_run_subject

__all__ = ["batch"]


def read_inputs(source: str) -> list[tuple[str, bytes]]:
    """(name, JSON bytes) for each ``*.json`` in a folder, or each line of a ``.jsonl`` file."""
    path = Path(source)
    items: list[tuple[str, bytes]] = []
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        items = [(f.name, f.read_bytes()) for f in files]
    elif path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                items.append((f"{path.name}:{n}", line.encode()))
    else:
        raise UsageError(f"--inputs {source} is neither a folder nor a file: check the path")
    if not items:
        raise UsageError(f"--inputs {source} holds no inputs (*.json files or JSON lines)")
    bad: list[str] = []
    for name, data in items:
        try:
            json.loads(data)
        except ValueError as exc:
            if not bad:
                first = f"input {name} is not JSON ({exc}); nothing was started"
            bad.append(f"{name} ({exc})")
    if len(bad) == 1:
        raise UsageError(first)
    if bad:  # every one named, so one pass fixes them all (the first 10, then a count)
        listed = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise UsageError(f"{len(bad)} inputs are not JSON: {listed}; nothing was started")
    return items


def _ended(last: StoredSignal) -> tuple[str, str, str]:
    """(status, fingerprint, error) of a run from the signal that ended it."""
    body = last.signal.body
    return (
        last.signal.kind.removeprefix("run_"),
        body.fingerprint if isinstance(body, RunCompleted) else "",
        f"{body.error.kind}: {body.error.message}" if isinstance(body, RunFailed) else "",
    )


SWEEP_EVERY = 15.0
"""Seconds between two reads of every unfinished run's last signal: what the commit
notices missed (a reconnect), and runs that ended before the notices began."""


class _Watch:
    """What the commit notices of the batch's pipeline say, heard from before its first
    run starts (a run may end, or open a circuit, before the last one is started)."""

    def __init__(self, pipeline: str, runs: dict[str, str]) -> None:
        self.pipeline, self.runs = pipeline, runs
        self.seen: set[str] = set()
        self.ended = asyncio.Event()
        self.ending: set[str] = set()
        self.circuits: list[tuple[str, str]] = []  # opened: said once each
        self.early: dict[str, bool] = {}
        """Runs noticed before their start returned (their id not in ``runs`` yet):
        whether an ending was among their notices."""

    def on_commit(self, subject: str, data: bytes) -> None:
        seen_run = parse_run_subject(subject)
        if seen_run is None or seen_run[0] != self.pipeline:
            return
        if _CIRCUIT_MARKER in data:
            self.circuits.extend(_opened(data))
            self.ended.set()  # wakes the loop to say it
        run_id = seen_run[1]
        ends = any(marker in data for marker in _ENDING_MARKERS)
        if run_id not in self.runs:
            if len(self.early) < 100_000:
                self.early[run_id] = self.early.get(run_id, False) or ends
            return
        self.seen.add(run_id)
        if ends:
            self.ending.add(run_id)
            self.ended.set()

    def started(self, run_id: str) -> None:
        """``run_id`` is the batch's: what was noticed of it before counts."""
        if run_id in self.early:
            self.seen.add(run_id)
            if self.early.pop(run_id):
                self.ending.add(run_id)
                self.ended.set()


async def _wait_all(
    bus: Bus,
    batch_id: str,
    runs: dict[str, str],
    outcome: dict[str, tuple[str, str, str]],
    host: Hosting,
    as_json: bool,
    watch: _Watch,
) -> None:
    """Fill ``outcome`` (by run id) as the batch's runs end, with a progress bar and, once,
    what keeps them from moving (:func:`advise`).

    A run's end is learnt from the commit notices (a core subscription to the log's
    commits, filtered by a bytes test, as the worker learns of cancellations): a commit
    holding an ending signal names the run, whose last signal is then read once. Every
    :data:`SWEEP_EVERY` seconds the unfinished runs are read as well. Reading every
    unfinished run every 0.1 s, as this did, was 12% of the command's CPU in a batch of
    200 (24,604 reads), and as much again in the server."""
    seen, ended, ending, circuits = watch.seen, watch.ended, watch.ending, watch.circuits
    said: set[str] = set()

    def say_circuits() -> None:
        notes = err_console if as_json else console
        while circuits:
            scope, reason = circuits.pop(0)
            if scope not in said:
                said.add(scope)
                notes.print(
                    f"circuit {scope} opened ({reason}): its attempts, in every run of the "
                    "batch, wait out the pipeline's circuit_cooldown before the next try "
                    "(Pipeline(..., circuit_threshold=, circuit_cooldown=); "
                    "docs/pipelines.md, Circuit breakers)",
                    markup=False,
                    highlight=False,
                )

    advisor = asyncio.create_task(
        advise(
            bus,
            host.pipeline,
            host.code,
            notes=err_console if as_json else console,
            started=lambda: bool(seen),
            run_id=next(iter(runs), ""),
        )
    )

    async def settle(run_id: str) -> bool:
        last = await bus.log.last_of_run(run_id)
        if last is not None:
            seen.add(run_id)
        if isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS:
            outcome[run_id] = _ended(last)
            progress.advance(task)
            return True
        return False

    try:
        with Progress(
            TextColumn(f"batch {batch_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=as_json,
        ) as progress:
            task = progress.add_task("runs", total=len(runs))
            loop = asyncio.get_running_loop()
            next_sweep = loop.time()  # at once: what the notices did not say
            while len(outcome) < len(runs):
                if loop.time() >= next_sweep:
                    for run_id in [r for r in runs if r not in outcome]:
                        await settle(run_id)
                    next_sweep = loop.time() + SWEEP_EVERY
                # A notice is the published commit, seen by core subscribers as
                # the stream stores it: the log may not hold it yet. A run noticed
                # ending but not ended in the log is read again shortly.
                wait = next_sweep - loop.time() if not ending else 0.05
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), max(0.0, wait))
                ended.clear()
                say_circuits()
                for run_id in list(ending):
                    if run_id in outcome or await settle(run_id):
                        ending.discard(run_id)
            say_circuits()  # one noticed with the last runs' ends
    finally:
        advisor.cancel()


BATCH_CONCURRENCY = 16
"""Phases a batch's own worker takes at once: many runs' attempts in flight let their
reports share commits (a batch of 1,000 clustering inputs: 15.2 runs/s with 2, 17.0 with
4, 19.2 with 8, 21.4 with 16, docs/performance.md)."""

_ENDING_MARKERS = tuple(f'"kind":"{kind}"'.encode() for kind in sorted(ENDING_KINDS))
_CIRCUIT_MARKER = b'"kind":"circuit_opened"'


def _opened(data: bytes) -> list[tuple[str, str]]:
    """The scope and reason of each circuit_opened in a commit (none if unreadable)."""
    try:
        commit = json.loads(data)
        bodies = [s["body"] for s in commit["signals"]]
        return [
            (str(b["scope"]), str(b.get("reason", "")))
            for b in bodies
            if b["kind"] == "circuit_opened"
        ]
    except (ValueError, KeyError, TypeError):
        return []


@cli.command()
@click.argument("pipeline")
@click.option(
    "--inputs",
    "source",
    required=True,
    help="A folder of *.json files, or a .jsonl file with one input per line.",
)
@click.option("--seed", type=int, default=None, help="Seed of every run (default: random).")
@click.option(
    "--set",
    "settings_",
    multiple=True,
    metavar="KEY=VALUE",
    help="Configuration for every run. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")
@tag_option("A tag recorded on every run of the batch (repeat for more), e.g. --tag team=data.")
@click.option(
    "--priority", type=int, default=0, help="Under a concurrency limit, higher runs go first."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=BATCH_CONCURRENCY,
    show_default=True,
    help="Phases the worker this command runs takes at once (when it runs one; at most "
    "as many child processes for phases with a timeout or a memory limit).",
)
@PIPELINES_OPTION
@run_async
async def batch(
    pipeline: str,
    source: str,
    seed: int | None,
    settings_: tuple[str, ...],
    as_json: bool,
    tags: dict[str, str],
    priority: int,
    concurrency: int,
    pipeline_specs: tuple[str, ...],
) -> None:
    """Run PIPELINE once per input and wait for all: one batch id, one summary.

    Exit 0 when every run completed, 1 otherwise, 2 for bad inputs (nothing started).
    """
    local = load_pipelines(pipeline_specs)
    pipeline = named_or_loaded(pipeline, local)
    items = read_inputs(source)
    config = parse_set(settings_)
    batch_id = f"batch-{secrets.token_hex(6)}"
    run_seed = seed if seed is not None else secrets.randbelow(2**31)
    runs: dict[str, str] = {}
    outcome: dict[str, tuple[str, str, str]] = {}
    async with open_bus(load_settings(), name="sisas-batch") as bus:
        check_settings(config, await pipeline_plan(bus, pipeline, local))
        await check_live_code(bus, pipeline, local)
        client = Client(bus, requested_by="sisas batch")
        watch = _Watch(pipeline, runs)
        async with (
            hosting(bus, pipeline, local, concurrency=concurrency) as host,
            bus.wire.on_commits(watch.on_commit),
        ):
            for i, (name, data) in enumerate(items):
                handle = await client.start(
                    pipeline,
                    input_bytes=data,
                    seed=run_seed,
                    config=config,
                    batch_id=batch_id,
                    idempotency_key=f"{batch_id}:{i}",
                    code=local.get(pipeline),
                    trace={"sisas.batch_id": batch_id},
                    tags=tags,
                    priority=priority,
                )
                runs[handle.run_id] = name
                watch.started(handle.run_id)
            try:
                await _wait_all(bus, batch_id, runs, outcome, host, as_json, watch)
            except asyncio.CancelledError:  # Ctrl-C, SIGTERM: say what becomes of the runs
                left = [r for r in runs if r not in outcome]
                what = f"batch {batch_id} ({len(left)} of its runs)"
                err_console.print(interrupted_note(host, left, what))
                raise
    outcome = {r: outcome[r] for r in runs}  # input order
    completed = sum(1 for s, _, _ in outcome.values() if s == "completed")
    summary = {
        "batch_id": batch_id,
        "pipeline": pipeline,
        "runs": len(runs),
        "completed": completed,
        "failed": len(runs) - completed,
        "results": [
            {
                "input": runs[r],
                "run_id": r,
                "status": s,
                "fingerprint": f or None,
                "error": e or None,
            }
            for r, (s, f, e) in outcome.items()
        ],
    }
    if as_json:
        print(json.dumps(summary))
    else:
        table = Table(
            title=f"batch {batch_id}: {completed}/{len(runs)} completed", title_justify="left"
        )
        for col in ("input", "run", "status", "fingerprint / error"):
            table.add_column(col)
        for r, (s, f, e) in outcome.items():
            style = "green" if s == "completed" else "red"
            table.add_row(runs[r], r, f"[{style}]{s}[/]", f[:23] + "…" if f else e)
        console.print(table)
    sys.exit(0 if completed == len(runs) else 1)
