"""Executing rerun tasks: one at a time here, or spread over worker processes.

``workers=1`` runs every task in this process, in order. ``workers=N`` runs them in N
fresh processes (spawned, each importing the pipeline from the source the caller
loaded it from, as a sisas worker does), results gathered in task order: the verdict
of a parallel rerun equal to a serial one certifies that parallel equals serial.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from sisas.errors import UsageError
from sisas.handlers.execute import Outcome, PhaseInputs, execute_phase
from sisas.pipeline import Pipeline
from sisas.replay.rerun import RerunPlan, Task

__all__ = ["execute_tasks"]

_PIPELINE: Pipeline | None = None


def _inputs(task: Task, artifacts: Mapping[str, bytes]) -> PhaseInputs:
    return PhaseInputs.of(task.inputs, task.gathered, artifacts)


def _run(
    pipe: Pipeline,
    task: Task,
    inputs: PhaseInputs,
    plan_run: str,
    config: dict[str, Any],
    secrets: Mapping[str, str],
) -> tuple[Outcome, float]:
    start = time.perf_counter()
    spec = pipe.phases.get(task.phase)
    declared = {k: v for k, v in secrets.items() if spec is not None and k in spec.secrets}
    outcome = execute_phase(
        pipe,
        task.phase,
        inputs,
        run_id=plan_run,
        seed=task.seed,
        attempt=task.attempt,
        item=task.item,
        config=config,
        clock=time.perf_counter,
        secrets=declared,
    )
    return outcome, time.perf_counter() - start


def _init(source: str, name: str) -> None:
    global _PIPELINE
    from sisas.loader import load_pipelines

    _PIPELINE = load_pipelines([source], entry_points=False)[name]


def _remote(
    task: bytes, inputs: bytes, run_id: str, config: dict[str, Any], secrets: dict[str, str]
) -> tuple[bytes, float]:
    assert _PIPELINE is not None
    outcome, seconds = _run(
        _PIPELINE,
        msgspec.msgpack.decode(task, type=Task),
        msgspec.msgpack.decode(inputs, type=PhaseInputs),
        run_id,
        config,
        secrets,
    )
    return msgspec.msgpack.encode(outcome), seconds


def execute_tasks(
    pipe: Pipeline,
    plan: RerunPlan,
    artifacts: Mapping[str, bytes],
    *,
    workers: int = 1,
    on_done: Callable[[int, int], None] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> list[tuple[Outcome, float]]:
    """Execute ``plan``'s tasks; return each outcome and its seconds, in task order.
    ``secrets``: the values of the secrets the phases declare, resolved by the caller
    where it runs (as a worker does); each phase gets only its own."""
    secrets = dict(secrets or {})
    total = len(plan.tasks)
    config = dict(plan.config)
    if workers <= 1:
        out = []
        for i, task in enumerate(plan.tasks):
            out.append(_run(pipe, task, _inputs(task, artifacts), plan.run_id, config, secrets))
            if on_done is not None:
                on_done(i + 1, total)
        return out
    if not pipe.source:
        raise UsageError(
            f"--workers {workers} runs phases in other processes, which import the pipeline: "
            f"load {pipe.name} with --pipelines MODULE_OR_FILE"
        )
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init, initargs=(pipe.source, pipe.name)
    ) as pool:
        futures = [
            pool.submit(
                _remote,
                msgspec.msgpack.encode(task),
                msgspec.msgpack.encode(_inputs(task, artifacts)),
                plan.run_id,
                config,
                secrets,
            )
            for task in plan.tasks
        ]
        for done, _ in enumerate(concurrent.futures.as_completed(futures), 1):
            if on_done is not None:
                on_done(done, total)
        results = []
        for f in futures:
            data, seconds = f.result()
            results.append((msgspec.msgpack.decode(data, type=Outcome), seconds))
    return results
