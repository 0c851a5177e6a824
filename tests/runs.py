"""Runs the tests make and check: the example's files, runs requested on a bus and
waited for, runs made in process, and the checks a test applies to their signals.

Test modules share these from here, never from one another (tests/test_suite_layout.py
checks that); fixtures stay in conftest.py, and running the `sisas` command is
tests/cli_process.py's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import nats

from bench.synthetic import synthetic_runs
from sisas.bus.ports import Ports
from sisas.bus.runtime import Bus
from sisas.client import Client
from sisas.client.verification import rerun_signals
from sisas.handlers.local import LocalRun
from sisas.handlers.state import RunState, fold
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.replay.verify import LogVerifier, report
from sisas.schemas import COMMITTED_DIR
from sisas.signals import ENDING_KINDS, ChainHead, Draft, Signal, StoredSignal, verify_chain

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "clustering.py")
"""The example pipeline (``clustering``), as a path to load or pass to ``--pipelines``."""
TEST_PIPES = str(ROOT / "tests" / "pipelines.py")
"""The tests' own pipelines (slow, limits, chain7, breaker, traced), as a path."""
POINTS_FILE = str(ROOT / "examples" / "data" / "points.json")
"""The example's input, as a path to pass to ``--input``."""
POINTS = Path(POINTS_FILE).read_bytes()
"""The example's input, as the bytes a run is requested with."""
GOLDEN = ROOT / "tests" / "golden"
"""The golden logs (made by ``python -m tests.golden.make``)."""
AT = datetime(2026, 1, 2, tzinfo=UTC)
"""When the runs made in process start (conftest's AT, the time of hand-made signals,
is three hours later that day)."""

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
assert "date-time" in FORMATS.checkers, "install rfc3339-validator (a dev dependency)"


# -- runs on a bus ----------------------------------------------------------------------


async def start(
    bus: Bus, pipeline: str, run_id: str, data: bytes, seed: int = 7, **config: object
) -> None:
    """Request run ``run_id`` of ``pipeline`` through the client, as a program would (the
    config is not checked against a plan: some tests start pipelines nobody registered)."""
    await Client(bus, requested_by="tests").start(
        pipeline, input_bytes=data, seed=seed, config=config, run_id=run_id, check_plan=False
    )


async def wait_end(bus: Ports, run_id: str, timeout: float = 60) -> tuple[RunState, list[Signal]]:
    """The folded state and the signals of ``run_id`` once it ended (or once ``timeout``
    seconds passed: the state then says how far it got); asserts that every message of
    the run decodes and that its chain is intact."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = await bus.log.last_of_run(run_id)
        if isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS:
            break
        await asyncio.sleep(0.05)
    records = await bus.log.read_run(run_id)
    signals = [r.signal for r in records if isinstance(r, StoredSignal)]
    assert len(signals) == len(records), "corrupt messages in the run"
    assert verify_chain(signals, run_id=run_id) == []
    return fold(signals), signals


async def append_runs(bus: Bus, count: int, start_at: int = 0, window: int = 64) -> int:
    """Append ``count`` synthetic runs (``run-0000000``…, one commit each), ``window``
    runs in flight at a time; the number of signals appended."""
    runs = list(synthetic_runs(count, start=start_at))
    for i in range(0, len(runs), window):
        await asyncio.gather(
            *(bus.log.append(r, expected_last_seq=0) for r in runs[i : i + window])
        )
    return sum(len(r) for r in runs)


# -- runs in process --------------------------------------------------------------------


def run_of(
    pipe: Pipeline, data: bytes = POINTS, run_id: str = "r1", seed: int = 7, **config: object
) -> LocalRun:
    """``pipe`` run to its end in this process, starting at AT."""
    run = LocalRun(pipe, run_id, at=AT, clock=time.perf_counter)
    run.start(data, seed=seed, config=config)  # type: ignore[arg-type]
    run.run()
    return run


def local_fingerprint(seed: int = 7, **config: object) -> str:
    """The fingerprint of the example run in process on POINTS: what a distributed run
    with the same seed and config must end with."""
    pipe = load_pipelines([EXAMPLE], entry_points=False)["clustering"]
    run = LocalRun(pipe, "ref", at=datetime(2026, 1, 1, tzinfo=UTC), clock=time.perf_counter)
    run.start(POINTS, seed=seed, config=config)  # type: ignore[arg-type]
    return run.run().fingerprint


async def rerun_serial_and_parallel(
    spec: str, data: bytes, *, seed: int, workers: int, **config: Any
) -> tuple[LocalRun, Any, Any]:
    """Run the pipeline in ``spec`` in process, then rerun it on 1 and on ``workers``
    spawned processes (which import it from ``spec``)."""
    [pipe] = load_pipelines([spec], entry_points=False).values()
    run = LocalRun(pipe, f"par-{seed}", at=AT, clock=time.perf_counter)
    run.start(data, seed=seed, config=config)
    run.run()

    async def fetch(digest: str) -> bytes | None:
        return run.artifacts.get(digest)

    serial = await rerun_signals(run.signals, {pipe.name: pipe}, fetch, workers=1)
    parallel = await rerun_signals(run.signals, {pipe.name: pipe}, fetch, workers=workers)
    return run, serial, parallel


# -- checks -----------------------------------------------------------------------------


def verify_signals(signals: list[Any], **kw: Any) -> Any:
    """The verdict of ``sisas replay verify`` on ``signals``, stored in this order;
    ``kw`` go to LogVerifier (``trusted=``)."""
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
    return report(LogVerifier(**kw).extend(records))


@functools.cache
def validator(kind: str) -> jsonschema.Draft202012Validator:
    """The committed JSON Schema of a signal ``kind`` (or ``signal``), formats checked."""
    schema = json.loads((COMMITTED_DIR / f"{kind}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


async def outsider_publishes(url: str, subject: str, data: bytes) -> int:
    """Publish straight into the log's stream, as any client with access could."""
    nc = await nats.connect(url)
    try:
        ack = await nc.jetstream().publish(subject, data)
        return int(ack.seq)
    finally:
        await nc.close()


def forged_after(signals: list[Any], body: Any, phase: str = "") -> Any:
    head = ChainHead.after(signals[-1])
    return head.extend([Draft(body=body, at=signals[-1].at, phase=phase)])[0][0]
