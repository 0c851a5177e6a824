"""``sisas run``, ``sisas cancel``, ``sisas worker``, ``sisas orchestrator``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Final

import click
from rich.console import Console

from sisas.bus.limits import limit_of
from sisas.bus.presence import orchestrator_live
from sisas.bus.runtime import Bus, open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.progress import RunResult, watch_run
from sisas.cli.render import command_name, duration_text
from sisas.cli.run_inputs import parse_set, read_input
from sisas.cli.tags import tag_option
from sisas.client.client import Client
from sisas.client.resume import Resume
from sisas.client.starting import check_settings, run_id_for
from sisas.errors import UsageError
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.services.host import running_services, stop_on_signals
from sisas.services.hosting import (
    Hosting,
    check_live_code,
    hosting,
    interrupted_note,
    no_worker_note,
    pipeline_plan,
    queued_note,
)
from sisas.services.worker import Worker
from sisas.signals import RunRequested, Scalar, StoredSignal, check_name
from sisas.signals.inputs import CancelRun
from sisas.signals.kinds import ENDING_KINDS
from sisas.telemetry.tracing import fail_span, run_span, span_in_run

__all__ = ["PIPELINES_OPTION", "cancel", "named_or_loaded", "orchestrator", "run", "worker"]

CANCEL_WAIT: Final = 30.0
"""Seconds ``sisas cancel`` waits for an orchestrator to record the cancellation."""

PIPELINES_OPTION = click.option(
    "--pipelines",
    "pipeline_specs",
    multiple=True,
    envvar="SISAS_PIPELINES",
    help="Pipeline code to load: a module (pkg.mod or pkg.mod:attr) or a .py file. "
    "Repeatable; SISAS_PIPELINES may list several, separated by spaces.",
)


def print_result(
    result: RunResult, as_json: bool, elapsed: float | None, *, next_hint: bool = True
) -> None:
    """The summary of a watched run (``elapsed``: seconds it took, None when unknown;
    ``next_hint``: end with where to look next, for callers that print no hints)."""
    if not as_json:
        style = {"completed": "bold green", "failed": "bold red"}.get(result.status, "yellow")
        took = f" in {duration_text(elapsed)}" if elapsed is not None else ""
        console.print(
            f"run [cyan]{result.run_id}[/] [{style}]{result.status}[/]{took}, "
            f"{result.signals} signals"
        )
        if result.fingerprint:
            console.print(f"fingerprint {result.fingerprint}")
        if result.skipped:
            did_not = "; ".join(f"{p} ({why})" for p, why in result.skipped.items())
            console.print(f"[dim]did not run: {did_not}[/]")
        if result.error and result.status == "cancelled":
            console.print(f"[yellow]cancelled: {result.error}[/]")
        elif result.error:
            where = f" in phase {result.failed_phase}" if result.failed_phase else ""
            console.print(f"[red]{result.error_kind}{where}: {result.error}[/]")
        for v in result.violations:
            console.print(
                f"  [red]contract {v['contract']} ({v['boundary']}) at "
                f"{v['path']}[/]: {v['message']}"
            )
        for i in result.failed_invariants:
            console.print(
                f"  [red]{i['invariant']}[/] {i['description']}: observed "
                f"{i['observed']!r}, expected {i['expected']!r}"
            )
        if next_hint:
            console.print(f"next: {command_name()} signals {result.run_id}")
    print(json.dumps(result.as_json()) if as_json else "", end="\n" if as_json else "")


@cli.command()
@click.argument("pipeline")
@click.option(
    "--input",
    "input_path",
    default=None,
    help="JSON input file, or - for stdin (default: the pipeline's default input, else null).",
)
@click.option("--seed", type=int, default=None, help="Run seed (default: random, recorded).")
@click.option(
    "--set",
    "settings_",
    multiple=True,
    metavar="KEY=VALUE",
    help="Configuration, e.g. --set publish.enabled=true. Repeatable.",
)
@click.option(
    "--idempotency-key",
    default=None,
    help="The same key always names the same run: a repeated command starts nothing.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Show live progress until the run ends; exit 0 if it completed, 1 if not.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (run_id, pipeline, status, fingerprint) last.",
)
@click.option(
    "--resume",
    "resume_of",
    default=None,
    metavar="RUN",
    help="Start a new run linked to RUN, reusing its verified outputs before --from "
    "(without --from: from RUN's first phase that has no output, i.e. from its failure).",
)
@click.option(
    "--from",
    "from_phase",
    default=None,
    metavar="PHASE",
    help="With --resume: the first phase to run again (default: the first failed one).",
)
@tag_option("A tag recorded in the run's first signal (repeat for more), e.g. --tag team=data.")
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="Under a concurrency limit (`sisas limits`), higher runs go first.",
)
@PIPELINES_OPTION
@run_async
async def run(
    pipeline: str,
    input_path: str | None,
    seed: int | None,
    settings_: tuple[str, ...],
    idempotency_key: str | None,
    wait: bool,
    as_json: bool,
    resume_of: str | None,
    from_phase: str | None,
    tags: dict[str, str],
    priority: int,
    pipeline_specs: tuple[str, ...],
) -> None:
    """Start a run of PIPELINE and print its id (with --wait: follow it to the end).

    With no server running and none configured, the embedded one is started, with an
    orchestrator and a worker for the pipelines given by --pipelines, for the duration
    of the run.
    """
    local = load_pipelines(pipeline_specs)
    pipeline = named_or_loaded(pipeline, local)
    if from_phase and not resume_of:
        raise UsageError("--from PHASE needs --resume RUN (the run whose outputs to reuse)")
    if resume_of:
        check_name(resume_of, "run id")
    default = local[pipeline].default_input if pipeline in local else None
    if input_path is None and not resume_of and default is not None:
        input_path = str(default)
        if not as_json:
            console.print(f"input: {default} (the pipeline's default; --input FILE for another)")
    result, elapsed = await start_and_watch(
        pipeline,
        read_input(input_path),
        resume_of=resume_of,
        from_phase=from_phase,
        seed=seed,
        config=parse_set(settings_),
        idempotency_key=idempotency_key,
        wait=wait,
        as_json=as_json,
        local=local,
        input_given=input_path is not None,  # a file (--input, or the default) is sent
        tags=tags,
        priority=priority,
    )
    if result is None:
        return
    print_result(result, as_json, elapsed)
    sys.exit(0 if result.status == "completed" else 1)


def named_or_loaded(pipeline: str, local: dict[str, Pipeline]) -> str:
    """PIPELINE is a name, or code to load (``examples.policy_evaluation``,
    ``pkg.mod:attr``, ``file.py``) holding exactly one pipeline: its name, added to ``local``."""
    if not any(c in pipeline for c in ".:/"):
        return check_name(pipeline, "pipeline name")
    found = load_pipelines([pipeline], entry_points=False)
    if len(found) != 1:
        names = ", ".join(sorted(found)) or "none"
        raise UsageError(
            f"{pipeline} holds {len(found)} pipelines ({names}): name one with MODULE:ATTR"
        )
    local.update(found)
    return next(iter(found))


async def start_and_watch(
    pipeline: str,
    data: bytes,
    *,
    seed: int | None,
    config: dict[str, Scalar],
    idempotency_key: str | None,
    wait: bool,
    as_json: bool,
    local: dict[str, Pipeline],
    requested_by: str = "sisas run",
    resume_of: str | None = None,
    from_phase: str | None = None,
    input_given: bool = True,
    tags: dict[str, str] | None = None,
    priority: int = 0,
) -> tuple[RunResult | None, float | None]:
    """Publish a start command and, when waiting (or hosting the handlers), watch the run.

    ``config`` is checked against the pipeline's plan first (:func:`check_settings`). With
    an idempotency key that names a run already, nothing is sent: that run is reported
    (and followed), or, when ``data`` (``input_given``: --input or the pipeline's default
    input; else no input is sent, ``null`` or a resumed run's) or ``config`` differ from what it
    was started with, :class:`UsageError` says so and names the fix. With tracing on, the
    run's root span covers the request (and, when waiting, the whole run); its context
    travels with the command to the orchestrator.
    """
    notes = err_console if as_json else console
    async with open_bus(load_settings(), name="sisas-run") as bus:
        check_settings(config, await pipeline_plan(bus, pipeline, local))
        await check_live_code(bus, pipeline, local)
        client = Client(bus, requested_by=requested_by)
        run_id = run_id_for(pipeline, idempotency_key)
        async with hosting(bus, pipeline, local) as host:
            started = datetime.now(UTC)
            attributes: dict[str, str | int] = {"sisas.requested_by": requested_by}
            with run_span(f"run {pipeline}", run_id, pipeline, attributes) as span:
                request = await client.request(
                    pipeline,
                    input_bytes=data if input_given else None,
                    seed=seed,
                    config=config,
                    idempotency_key=idempotency_key,
                    resume_of=resume_of or "",
                    from_phase=from_phase or "",
                    code=local.get(pipeline),
                    at=started,
                    run_id=run_id,
                    root_span=False,
                    tags=tags,
                    priority=priority,
                )
                existing = request.existing
                span.set_attribute("sisas.seed", request.seed)
                if existing is not None:
                    notes.print(_existing_note(run_id, idempotency_key or "", existing, seed))
                else:
                    _announce(
                        run_id, pipeline, request.seed, request.resume, request.duplicate, as_json
                    )
                    limit = await limit_of(bus, pipeline)
                    if limit is not None and not request.duplicate:
                        notes.print(
                            f"{pipeline} runs at most {limit} at once (`sisas limits list`): "
                            f"beyond that this run waits for a slot; `sisas show {run_id}` "
                            "says where it stands",
                            markup=False,
                        )
                if not wait and not host.worker:
                    await _not_following(bus, host, run_id, existing is not None, notes, as_json)
                    return None, 0.0
                try:
                    result = await watch_run(
                        bus,
                        run_id,
                        pipeline,
                        console=None if as_json else console,
                        notes=notes,
                        code=host.code,
                    )
                except asyncio.CancelledError:  # Ctrl-C, SIGTERM: say what becomes of it
                    err_console.print(interrupted_note(host, [run_id]))
                    raise
                span.set_attribute("sisas.status", result.status)
                if result.status != "completed":
                    fail_span(span, f"run {result.status}")
                elif as_json:
                    result.values = await client.small_outputs(run_id)
    # the duration as recorded in the log (what show prints), not this command's wait
    return result, result.recorded_duration


def _announce(
    run_id: str, pipeline: str, seed: int, resume: Resume | None, duplicate: bool, as_json: bool
) -> None:
    """Say the run is requested (or that the same start waits in ``SISAS_IN`` already)."""
    if duplicate:  # the same start, sent moments ago, is queued
        err_console.print(
            f"run {run_id} was requested already and waits for an orchestrator: nothing "
            "new is sent, and the first request's input, seed and configuration apply"
        )
    elif not as_json:
        if resume is not None:
            console.print(
                f"resuming {resume.old.run_id} from {resume.from_phase}: reusing the "
                f"verified outputs of {', '.join(resume.reuse) or 'no phase'}"
            )
        console.print(f"run [cyan]{run_id}[/] of {pipeline} requested (seed {seed})")


async def _requested(bus: Bus, run_id: str) -> RunRequested | None:
    """The ``run_requested`` of ``run_id`` when the log has the run, else None."""
    rec = await bus.log.first_of_kind(run_id, "run_requested")
    if isinstance(rec, StoredSignal) and isinstance(rec.signal.body, RunRequested):
        return rec.signal.body
    return None


def _existing_note(run_id: str, key: str, existing: RunRequested, seed: int | None) -> str:
    ignored = (
        f"; --seed {seed} is ignored: the run has seed {existing.seed}"
        if seed is not None and seed != existing.seed
        else ""
    )
    return (
        f"run {run_id} exists already for idempotency key {key!r} (seed {existing.seed}, "
        f"input {existing.input_digest[:19]}…): nothing new is started{ignored}"
    )


async def _not_following(
    bus: Bus, host: Hosting, run_id: str, existing: bool, notes: Console, as_json: bool
) -> None:
    """Without --wait: say what would keep the run from moving, print its status."""
    last = await bus.log.last_of_run(run_id)
    status = "running"
    if isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS:
        status = last.signal.kind.removeprefix("run_")
    if status == "running":
        if last is None and not await orchestrator_live(bus.wire):
            notes.print(f"[yellow]{queued_note()}[/]")
        if not host.served:
            notes.print(f"[yellow]{no_worker_note(host.pipeline, host.code)}[/]")
    if as_json:
        print(json.dumps({"run_id": run_id, "pipeline": host.pipeline, "status": status}))
    elif existing:
        console.print(f"run [cyan]{run_id}[/] {status}")


@cli.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by an operator", help="Recorded in the log.")
@run_async
async def cancel(run_id: str, reason: str) -> None:
    """Cancel RUN_ID: no phase starts after this; the log records who and why.

    Returns once `run_cancelled` is in the log. With no server running, this command
    runs an orchestrator for as long as that takes. On a shared server with no
    orchestrator running, the cancellation is queued: it takes effect when one starts.
    A run waiting for a slot under a concurrency limit leaves the queue, recorded
    cancelled, its slot never taken. Exit 1 if the run ended otherwise first.
    """
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-cancel") as bus:
        last = await bus.log.last_of_run(run_id)
        if not isinstance(last, StoredSignal):
            # not in the log: it may wait for a slot under a concurrency limit
            await Client(bus, requested_by="sisas cancel").cancel(run_id, reason)
        elif last.signal.kind in ENDING_KINDS:
            fail(f"run {run_id} already ended ({last.signal.kind}); nothing to cancel")
        else:
            with span_in_run("cancel", run_id, last.signal.pipeline, {"sisas.reason": reason}):
                await bus.inputs.publish(
                    CancelRun(
                        id=f"cancel:{run_id}",
                        pipeline=last.signal.pipeline,
                        run_id=run_id,
                        at=datetime.now(UTC),
                        reason=reason,
                        requested_by="sisas cancel",
                    ),
                )
        if bus.server is not None:  # we started the server: only we can act on it
            async with running_services(bus, {}):
                ended = await _ending(bus, run_id, CANCEL_WAIT)
        elif await orchestrator_live(bus.wire):
            ended = await _ending(bus, run_id, CANCEL_WAIT)
        else:
            console.print(
                f"cancellation of {run_id} is queued: no orchestrator is running to record "
                "it; it takes effect when one starts (`sisas up`, or `sisas orchestrator`)"
            )
            return
    if ended is None:
        console.print(
            f"cancellation of {run_id} requested; no orchestrator recorded it within "
            f"{CANCEL_WAIT:.0f}s (busy?): `sisas watch {run_id}` shows when the run ends"
        )
    elif ended != "run_cancelled":
        fail(f"run {run_id} {ended.removeprefix('run_')} before the cancellation took effect", 1)
    else:
        console.print(f"run {run_id} cancelled (run_cancelled is in the log)")


async def _ending(bus: Bus, run_id: str, timeout: float) -> str | None:
    """The kind of the signal that ends ``run_id``, once it is in the log; None when
    none arrives within ``timeout`` seconds."""
    try:
        async with (
            asyncio.timeout(timeout),
            contextlib.aclosing(bus.log.follow_run(run_id)) as records,
        ):
            async for rec in records:
                if isinstance(rec, StoredSignal) and rec.signal.kind in ENDING_KINDS:
                    return rec.signal.kind
    except TimeoutError:
        pass
    return None


@cli.command()
@PIPELINES_OPTION
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=2,
    show_default=True,
    help="Phases run at once by this worker.",
)
@click.option(
    "--ack-wait",
    type=click.FloatRange(0.5),
    default=30.0,
    show_default=True,
    help="Seconds without a heartbeat before a phase is given to another worker.",
)
@click.option("--name", default=None, help="Worker name recorded in the log (default host-pid).")
@click.option(
    "--reload",
    is_flag=True,
    help="Watch the pipelines' files; changed code runs from the next attempt on.",
)
@run_async
async def worker(
    pipeline_specs: tuple[str, ...],
    concurrency: int,
    ack_wait: float,
    name: str | None,
    reload: bool,
) -> None:
    """Run phases of the given pipelines until Ctrl-C (any number of workers may run)."""
    pipes = load_pipelines(pipeline_specs)
    if not pipes:
        fail(
            "no pipelines to work on: pass --pipelines MODULE_OR_FILE (or install a "
            "package with a `sisas.pipelines` entry point)"
        )
    async with open_bus(load_settings(), name="sisas-worker") as bus:
        w = Worker(bus, pipes, concurrency=concurrency, ack_wait=ack_wait, name=name, reload=reload)
        trust = (
            f"runs only work signed by {len(w.trusted)} trusted key(s)"
            if w.trusted
            else "no signature required (SISAS_TRUSTED_KEYS unset)"
        )
        err_console.print(
            f"worker {w.name} on {bus.url}: {', '.join(sorted(pipes))} "
            f"(concurrency {concurrency}; {trust}); Ctrl-C to stop"
        )
        stop = asyncio.Event()
        stop_on_signals(stop)
        await w.run(stop)
    refused = f", {w.refused} refused (signature)" if w.refused else ""
    err_console.print(f"worker stopped after {w.completed} phase attempts{refused}")


@cli.command()
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=5_000,
    show_default=True,
    help="Most signals folded per DuckDB transaction.",
)
@run_async
async def projector(batch_size: int) -> None:
    """Fold the log into the data folder's DuckDB file and answer queries until Ctrl-C.

    One per machine that should answer `sisas runs`, `show`, `manifest`, `stats` (any
    number may run; each keeps its own file). `sisas up` runs one already.
    """
    async with open_bus(load_settings(), name="sisas-projector") as bus:
        err_console.print(f"projector on {bus.url}; Ctrl-C to stop")
        async with running_services(
            bus, {}, orchestrator=False, projector=True, projector_batch=batch_size
        ) as stop:
            stop_on_signals(stop)
            await stop.wait()
    err_console.print("projector stopped")


@cli.command()
@run_async
async def orchestrator() -> None:
    """Turn commands and worker reports into signals until Ctrl-C (several may run)."""
    async with open_bus(load_settings(), name="sisas-orchestrator") as bus:
        err_console.print(f"orchestrator on {bus.url}; Ctrl-C to stop")
        async with running_services(bus, {}) as stop:
            stop_on_signals(stop)
            await stop.wait()
    err_console.print("orchestrator stopped")
