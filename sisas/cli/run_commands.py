"""``sisas run``, ``sisas cancel``, ``sisas worker``, ``sisas orchestrator``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import click

from sisas.bus.inputs import publish_input, publish_start
from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.services import running_services, stop_on_signals
from sisas.bus.worker import Worker
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.progress import RunResult, watch_run
from sisas.cli.resume import prepare_resume
from sisas.errors import UsageError
from sisas.handlers.derive import keyed_run_id
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.signals import Scalar, StoredSignal, check_name
from sisas.signals.inputs import CancelRun
from sisas.telemetry.tracing import fail_span, run_span, span_in_run

__all__ = ["cancel", "named_or_loaded", "orchestrator", "run", "worker"]

PIPELINES_OPTION = click.option(
    "--pipelines",
    "pipeline_specs",
    multiple=True,
    envvar="SISAS_PIPELINES",
    help="Pipeline code to load: a module (pkg.mod or pkg.mod:attr) or a .py file. "
    "Repeatable; SISAS_PIPELINES may list several, separated by spaces.",
)


def parse_set(values: tuple[str, ...]) -> dict[str, Scalar]:
    """``phase.enabled=false`` -> ``{"phase.enabled": False}`` (JSON scalars, else text)."""
    config: dict[str, Scalar] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: use KEY=VALUE, e.g. --set publish.enabled=true")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, dict | list):
            raise UsageError(f"--set {item!r}: values must be numbers, true/false, null or text")
        config[key] = value
    return config


def read_input(source: str | None) -> bytes:
    if source is None:
        return b"null"
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read input {source}: {exc.strerror}; check the path") from None
    try:
        json.loads(data)
    except ValueError as exc:
        raise UsageError(
            f"input {source} is not JSON ({exc}); pass a JSON file or - for standard input"
        ) from None
    return data


def run_id_for(pipeline: str, idempotency_key: str | None) -> str:
    if idempotency_key:
        return keyed_run_id(pipeline, idempotency_key)
    return f"{pipeline[:40]}-{secrets.token_hex(6)}"


@contextlib.asynccontextmanager
async def _handlers_if_needed(
    bus: Bus,
    pipeline: str,
    local: dict[str, Pipeline],
) -> AsyncIterator[bool]:
    """Run an orchestrator and worker here when nobody else will; yield whether we do."""
    registered = await PlanRegistry(bus.js).get(pipeline)
    if bus.server is not None:  # we started the server: nobody else is listening
        if pipeline not in local:
            raise UsageError(_unknown(pipeline, local, []))
        async with running_services(bus, local):
            yield True
    elif registered is None and pipeline in local:
        async with running_services(bus, {pipeline: local[pipeline]}, orchestrator=False):
            yield True
    elif registered is None:
        raise UsageError(_unknown(pipeline, local, await PlanRegistry(bus.js).names()))
    else:
        yield False


def _unknown(pipeline: str, local: dict[str, Pipeline], registered: list[str]) -> str:
    known = sorted(set(local) | set(registered))
    return (
        f"unknown pipeline {pipeline!r} (known: {', '.join(known) or 'none'}): pass "
        "--pipelines MODULE_OR_FILE, or start a worker that has it"
    )


def print_result(result: RunResult, as_json: bool, elapsed: float) -> None:
    if not as_json:
        style = {"completed": "bold green", "failed": "bold red"}.get(result.status, "yellow")
        console.print(
            f"run [cyan]{result.run_id}[/] [{style}]{result.status}[/] in "
            f"{elapsed:.2f}s, {result.signals} signals"
        )
        if result.fingerprint:
            console.print(f"fingerprint {result.fingerprint}")
        if result.error:
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
        console.print(f"next: sisas signals {result.run_id}")
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
    help="Start a new run linked to RUN, reusing its outputs before --from.",
)
@click.option(
    "--from",
    "from_phase",
    default=None,
    metavar="PHASE",
    help="With --resume: the first phase to run again.",
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
    pipeline_specs: tuple[str, ...],
) -> None:
    """Start a run of PIPELINE and print its id (with --wait: follow it to the end).

    With no server running and none configured, the embedded one is started, with an
    orchestrator and a worker for the pipelines given by --pipelines, for the duration
    of the run.
    """
    local = load_pipelines(pipeline_specs)
    pipeline = named_or_loaded(pipeline, local)
    if bool(resume_of) != bool(from_phase):
        raise UsageError("--resume RUN and --from PHASE go together")
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
) -> tuple[RunResult | None, float]:
    """Publish a start command and, when waiting (or hosting the handlers), watch the run.

    With tracing on, the run's root span covers the request (and, when waiting, the
    whole run); its context travels with the command to the orchestrator.
    """
    run_id = run_id_for(pipeline, idempotency_key)
    async with open_bus(load_settings(), name="sisas-run") as bus:
        resume = None
        if resume_of and from_phase:
            resume = await prepare_resume(bus, pipeline, resume_of, from_phase, local.get(pipeline))
            config = {**resume.config, **config}
            seed = resume.seed if seed is None else seed
        run_seed = seed if seed is not None else secrets.randbelow(2**31)
        attributes: dict[str, str | int] = {
            "sisas.seed": run_seed,
            "sisas.requested_by": requested_by,
        }
        async with _handlers_if_needed(bus, pipeline, local) as here:
            if resume is not None and data == b"null":
                digest = resume.input_digest  # the old run's input, unless one is given
            else:
                digest = await bus.artifacts.put(data)
            started = datetime.now(UTC)
            with run_span(f"run {pipeline}", run_id, pipeline, attributes) as span:
                await publish_start(
                    bus.js,
                    pipeline,
                    run_id,
                    input_digest=digest,
                    seed=run_seed,
                    at=started,
                    config=config,
                    requested_by=requested_by,
                    idempotency_key=idempotency_key or "",
                    resume_of=resume_of or "",
                    resume_from_phase=from_phase or "",
                    reuse=resume.reuse if resume else {},
                )
                if resume is not None and not as_json:
                    console.print(
                        f"resuming {resume_of} from {from_phase}: reusing the verified "
                        f"outputs of {', '.join(resume.reuse) or 'no phase'}"
                    )
                if not as_json:
                    console.print(
                        f"run [cyan]{run_id}[/] of {pipeline} requested (seed {run_seed})"
                    )
                if not wait and not here:
                    if as_json:
                        print(
                            json.dumps(
                                {"run_id": run_id, "pipeline": pipeline, "status": "running"}
                            )
                        )
                    return None, 0.0
                result = await watch_run(
                    bus.log, run_id, pipeline, console=None if as_json else console
                )
                span.set_attribute("sisas.status", result.status)
                if result.status != "completed":
                    fail_span(span, f"run {result.status}")
    return result, (datetime.now(UTC) - started).total_seconds()


@cli.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by an operator", help="Recorded in the log.")
@run_async
async def cancel(run_id: str, reason: str) -> None:
    """Cancel RUN_ID: no phase starts after this; the log records who and why."""
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-cancel") as bus:
        last = await bus.log.last_of_run(run_id)
        if not isinstance(last, StoredSignal):
            fail(f"no run {run_id!r} in this log: check the run id")
        if last.signal.kind in ("run_completed", "run_failed", "run_cancelled"):
            fail(f"run {run_id} already ended ({last.signal.kind}); nothing to cancel")
        with span_in_run("cancel", run_id, last.signal.pipeline, {"sisas.reason": reason}):
            await publish_input(
                bus.js,
                CancelRun(
                    id=f"cancel:{run_id}",
                    pipeline=last.signal.pipeline,
                    run_id=run_id,
                    at=datetime.now(UTC),
                    reason=reason,
                    requested_by="sisas cancel",
                ),
            )
    console.print(f"cancellation of {run_id} requested")


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
@run_async
async def worker(
    pipeline_specs: tuple[str, ...], concurrency: int, ack_wait: float, name: str | None
) -> None:
    """Run phases of the given pipelines until Ctrl-C (any number of workers may run)."""
    pipes = load_pipelines(pipeline_specs)
    if not pipes:
        fail(
            "no pipelines to work on: pass --pipelines MODULE_OR_FILE (or install a "
            "package with a `sisas.pipelines` entry point)"
        )
    async with open_bus(load_settings(), name="sisas-worker") as bus:
        w = Worker(bus, pipes, concurrency=concurrency, ack_wait=ack_wait, name=name)
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
