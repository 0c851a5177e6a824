"""Which functions can be phases: async def ones run (awaited, under the same timeout
and retry rules); what a worker cannot run is refused at registration, naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sisas.bus.runtime import Bus
from sisas.client import Client
from sisas.errors import InvalidPipeline
from sisas.loader import load_pipelines
from sisas.pipeline import Context, Pipeline
from sisas.services.host import running_services
from sisas.testing import run_pipeline

ASYNC = str(Path(__file__).parent / "async_pipelines.py")


def waiting() -> Pipeline:
    return load_pipelines([ASYNC], entry_points=False)["waiting"]


def test_async_phases_run_in_process() -> None:
    result = run_pipeline(waiting(), {"value": 2.5}, seed=1).raise_for_status()
    assert result.output("fetch") == 2.5 and result.output("stall") == 6.0


async def test_async_phases_run_in_process_from_an_async_test() -> None:
    result = run_pipeline(waiting(), {"value": 1.0}, seed=1)
    assert result.status == "completed" and result.output("double") == 2.0


def test_an_async_phase_past_its_timeout_is_timed_out_and_retried() -> None:
    result = run_pipeline(waiting(), {"value": 1.0}, config={"stall": True})
    kinds = [s.kind for s in result.signals if s.phase == "stall"]
    assert kinds.count("phase_timed_out") == 2 and "phase_retry_scheduled" in kinds
    assert result.status == "failed" and result.failed_phase == "stall"


async def test_async_phases_run_on_workers_in_process_and_in_a_child(bus: Bus) -> None:
    async with running_services(bus, {"waiting": waiting()}):
        handle = await Client(bus).start("waiting", {"value": 4.0})
        result = await handle.result(timeout=60)
    assert result.status == "completed"
    assert await Client(bus).output(handle.run_id, "stall") == 9.0


def refused(fn: Any) -> str:
    pipe = Pipeline("refusals")
    with pytest.raises(InvalidPipeline) as caught:
        pipe.phase()(fn)
    return str(caught.value)


def test_what_a_worker_cannot_run_is_refused_at_registration() -> None:
    def gen(ctx: Context, input: int) -> Any:
        yield input

    async def agen(ctx: Context, input: int) -> Any:
        yield input

    def star(ctx: Context, *inputs: int) -> int:
        return 0

    def kw(ctx: Context, **inputs: int) -> int:
        return 0

    def positional(ctx: Context, input: int, /) -> int:
        return input

    assert "is a generator (it uses yield)" in refused(gen)
    assert "is a generator (it uses yield)" in refused(agen)
    assert "takes *inputs" in refused(star)
    assert "takes **inputs" in refused(kw)
    assert "positional-only" in refused(positional)
