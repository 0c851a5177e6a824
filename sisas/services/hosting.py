"""Which handlers a command runs for its run, and what it tells the user when nothing
else will move the run.

- On a server the command started itself (no ``sisas up``, no ``SISAS_NATS_URL``) nobody
  else is listening: it runs an orchestrator and a worker for its own duration.
- On a shared server it runs a worker whenever it has the pipeline's code and no live
  worker runs that pipeline (:mod:`sisas.bus.presence`), so ``sisas run CODE`` works
  against any ``sisas up``, whatever pipelines that one loaded. It never runs an
  orchestrator there: one that runs is a deployment's choice (``sisas up``,
  ``sisas orchestrator``), and a request waits for it in ``SISAS_IN``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sisas.bus.presence import live_workers, worker_live
from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus
from sisas.errors import UsageError
from sisas.pipeline import Pipeline
from sisas.services.host import running_services
from sisas.signals.plan import PipelinePlan

__all__ = [
    "Hosting",
    "check_live_code",
    "code_hint",
    "hosting",
    "interrupted_note",
    "no_worker_note",
    "pipeline_plan",
    "queued_note",
]


@dataclass(frozen=True)
class Hosting:
    """What runs in this command for ``pipeline``, and whether anything serves it."""

    pipeline: str
    code: str
    """The pipeline's code as a user would pass it to ``--pipelines`` (for hints)."""
    own_server: bool
    """The command started the server (and runs the orchestrator): nothing outlives it."""
    worker: bool
    """A worker for the pipeline runs in this command."""
    served: bool
    """A worker runs the pipeline's phases now: this command's, or a live one elsewhere."""


def code_hint(pipeline: str, local: dict[str, Pipeline]) -> str:
    """How to name ``pipeline``'s code in a command line: the module or file it was loaded
    from (relative to here when below it), else a placeholder."""
    pipe = local.get(pipeline)
    if pipe is None or not pipe.source:
        return "MODULE_OR_FILE"
    if pipe.source.endswith(".py"):
        with contextlib.suppress(ValueError):
            return str(Path(pipe.source).relative_to(Path.cwd()))
    return pipe.source


async def pipeline_plan(bus: Bus, pipeline: str, local: dict[str, Pipeline]) -> PipelinePlan:
    """The plan a run of ``pipeline`` will follow: of the code loaded here, else the one a
    worker registered. Raises :class:`UsageError` listing the known pipelines when there
    is none, or (on a server this command started, where no other worker can come) when
    the code is not loaded here."""
    if pipeline in local:
        return local[pipeline].plan()
    registry = PlanRegistry(bus.js)
    plan = None if bus.server is not None else await registry.get(pipeline)
    if plan is None:
        registered = [] if bus.server is not None else await registry.names()
        known = sorted(set(local) | set(registered))
        raise UsageError(
            f"unknown pipeline {pipeline!r} (known: {', '.join(known) or 'none'}): pass "
            "--pipelines MODULE_OR_FILE, or start a worker that has it"
        )
    return plan


@contextlib.asynccontextmanager
async def hosting(
    bus: Bus, pipeline: str, local: dict[str, Pipeline], *, concurrency: int = 2
) -> AsyncIterator[Hosting]:
    """Run the handlers this command must run for ``pipeline`` inside the block (see the
    module's docstring); yield what runs and whether a worker serves the pipeline. Call
    :func:`pipeline_plan` first: it refuses a pipeline no one could run. ``concurrency``:
    the phases a worker run here takes at once."""
    here = {pipeline: local[pipeline]} if pipeline in local else {}
    facts = {"pipeline": pipeline, "code": code_hint(pipeline, local)}
    if bus.server is not None:  # we started the server: nobody else is listening
        async with running_services(bus, here, concurrency=concurrency):
            yield Hosting(**facts, own_server=True, worker=True, served=True)
    elif here and not await worker_live(bus.wire, pipeline):
        async with running_services(bus, here, orchestrator=False, concurrency=concurrency):
            yield Hosting(**facts, own_server=False, worker=True, served=True)
    else:
        served = bool(here) or await worker_live(bus.wire, pipeline)
        yield Hosting(**facts, own_server=False, worker=False, served=served)


async def check_live_code(bus: Bus, pipeline: str, local: dict[str, Pipeline]) -> None:
    """Refuse (:class:`UsageError`) to request a run of ``pipeline`` with the code loaded
    here when the live workers that would run it run other code: the user would think
    their code ran. Nothing to check without local code, or when no worker is live
    (this command then runs its own)."""
    pipe = local.get(pipeline)
    if pipe is None or bus.server is not None:
        return
    mine = pipe.plan().fingerprint
    theirs = {
        str(fp)
        for about in await live_workers(bus.wire, pipeline)
        if (fp := (about.get("fingerprints") or {}).get(pipeline))
    }
    other = sorted(theirs - {mine})
    if other:
        code = code_hint(pipeline, local)
        raise UsageError(
            f"the live worker(s) of {pipeline} run other code (fingerprint "
            f"{', '.join(f[:23] + '…' for f in other)}) than {code} (fingerprint "
            f"{mine[:23]}…): the run would not run the code you passed. Put your changes "
            f"into the file they serve (a worker started with --reload picks them up at "
            f"once), or restart them with {code}; or run the pipeline by name "
            f"(`sisas run {pipeline}`) to use their code"
        )


def no_worker_note(pipeline: str, code: str) -> str:
    """What to do when no live worker runs ``pipeline``."""
    return (
        f"no live worker runs {pipeline}: its phases wait until one does; start one "
        f"(`sisas worker --pipelines {code}`), or restart `sisas up` with "
        f"`--pipelines {code}`"
    )


def queued_note() -> str:
    """What a request is when no orchestrator runs."""
    return (
        "no orchestrator is running: the request is queued and runs when one starts "
        "(`sisas up`, or `sisas orchestrator`)"
    )


def interrupted_note(host: Hosting, run_ids: list[str], what: str = "") -> str:
    """What becomes of the unfinished ``run_ids`` (``what``: how to name them, by default
    "run ID") when the command that follows them is interrupted."""
    what = what or f"run {run_ids[0]}"
    cancel = (
        f"`sisas cancel {run_ids[0]}`"
        if len(run_ids) == 1
        else f"`sisas cancel RUN` for each ({', '.join(run_ids[:2])}, …)"
    )
    if host.own_server:
        return (
            f"{what} is left unfinished (the server, orchestrator and worker this command "
            f"ran have stopped): it continues when `sisas up --pipelines {host.code}` runs "
            f"on this data folder; or cancel it: {cancel}"
        )
    if host.worker:
        return (
            f"{what} is left unfinished (the worker this command ran has stopped): it "
            f"continues when a worker runs {host.pipeline} (`sisas worker --pipelines "
            f"{host.code}`); or cancel it: {cancel}"
        )
    watch = f"`sisas watch {run_ids[0]}` follows it, " if len(run_ids) == 1 else ""
    return f"stopped following {what}; it goes on: {watch}{cancel} stops it"
