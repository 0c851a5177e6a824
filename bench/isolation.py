"""Isolated phases: a child started per attempt (cold) vs the worker's warm pool vs no
isolation, on the example's ``cluster`` phase (``timeout=60``).

    .venv/bin/python -m bench isolation [--attempts N] [--runs N] [--batch N] [--profile FILE]

- *attempts*: the ``cluster`` attempt of an example run, one after the other, with no
  bus: :func:`cold_attempt` (a fresh interpreter importing the
  pipeline each time) vs :class:`~sisas.services.isolation_pool.IsolationPool` (one
  warm child) vs :func:`~sisas.handlers.execute.execute_phase` in this process.
- *runs*: ``N`` runs of ``examples/clustering.py`` (29 attempts each, ``cluster`` in a
  child) started at once on an embedded nats-server (``sync_interval: always``), an
  orchestrator and a worker with 2 slots in this process (what ``sisas batch`` runs on a
  server of its own); the worker's isolated attempts cold, warm, or in its threads. The
  modes alternate for ``--rounds`` rounds; the best round of each counts.
- *batch*: ``sisas batch clustering --inputs DIR`` over ``N`` inputs as a user runs it
  (a process of its own, its own server), wall time from the command's start to its
  exit, and the CPU time each of its processes used per run (the floor: see
  docs/performance.md); ``--profile FILE`` runs it under cProfile and prints where the
  command's event loop spent its time.

Ratios are printed against the cold figure measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.runs import concurrent_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.handlers.execute import Outcome, PhaseInputs
from sisas.handlers.local import LocalRun
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.services.isolation_pool import IsolationPool
from sisas.services.orchestrator import Orchestrator
from sisas.services.worker import Worker
from sisas.signals import Signal
from sisas.signals.kinds import PhaseScheduled

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "clustering.py")
POINTS = (ROOT / "examples" / "data" / "points.json").read_bytes()
SISAS = Path(sys.executable).with_name("sisas")
MODES = ("cold", "warm", "none")


class ColdIsolation(IsolationPool):
    """What the worker did before the pool: a fresh child per attempt (a pool of one
    child, started for the attempt and ended after it)."""

    def warm(self, pipelines: Any) -> None:
        return None

    async def run(  # type: ignore[override]
        self,
        pipe: Pipeline,
        phase: str,
        inputs: PhaseInputs,
        *,
        timeout: float | None,
        memory_limit: int | None,
        kwargs: dict[str, Any],
    ) -> tuple[Outcome, bool]:
        return await cold_attempt(
            pipe, phase, inputs, timeout=timeout, memory_limit=memory_limit, kwargs=kwargs
        )


async def cold_attempt(
    pipe: Pipeline, phase: str, inputs: PhaseInputs, **common: Any
) -> tuple[Outcome, bool]:
    """One attempt in a child started for it alone."""
    async with IsolationPool(1) as pool:
        return await pool.run(pipe, phase, inputs, **common)


# -- attempts ---------------------------------------------------------------------------


class _Recording(LocalRun):
    """An example run in process that keeps the ``cluster`` attempt's inputs."""

    cluster: tuple[Signal, PhaseInputs] | None = None

    def execute(self, scheduled: Signal, inputs: PhaseInputs) -> tuple[Outcome, bool]:
        if scheduled.phase == "cluster":
            self.cluster = (scheduled, inputs)
        return super().execute(scheduled, inputs)


def cluster_attempt() -> tuple[Pipeline, PhaseInputs, dict[str, Any]]:
    pipe = load_pipelines([EXAMPLE], entry_points=False)["clustering"]
    run = _Recording(pipe, "bench", at=datetime(2026, 1, 1, tzinfo=UTC), clock=time.perf_counter)
    run.start(POINTS, seed=7)
    run.run()
    assert run.cluster is not None
    scheduled, inputs = run.cluster
    body = scheduled.body
    assert isinstance(body, PhaseScheduled)
    kwargs = {"run_id": "bench", "seed": body.seed, "attempt": 0, "item": None, "config": {}}
    return pipe, inputs, kwargs


async def attempts(n_cold: int, n: int) -> dict[str, float]:
    """Attempts per second of the ``cluster`` phase: cold, warm, in process."""
    pipe, inputs, kwargs = cluster_attempt()
    common = {"timeout": 60.0, "memory_limit": None, "kwargs": kwargs}
    out: dict[str, float] = {}

    t0 = time.perf_counter()
    for _ in range(n_cold):
        outcome, _ = await cold_attempt(pipe, "cluster", inputs, **common)
        assert outcome.status == "completed", outcome.error
    out["cold"] = n_cold / (time.perf_counter() - t0)

    async with IsolationPool(1) as pool:
        await pool.run(pipe, "cluster", inputs, **common)  # type: ignore[arg-type]  # starts it
        t0 = time.perf_counter()
        for _ in range(n):
            outcome, _ = await pool.run(pipe, "cluster", inputs, **common)  # type: ignore[arg-type]
            assert outcome.status == "completed", outcome.error
        out["warm"] = n / (time.perf_counter() - t0)
        assert pool.spawned == 1

    from sisas.handlers.execute import execute_phase

    t0 = time.perf_counter()
    for _ in range(n):
        outcome = execute_phase(pipe, "cluster", inputs, clock=time.perf_counter, **kwargs)
        assert outcome.status == "completed", outcome.error
    out["none"] = n / (time.perf_counter() - t0)
    return out


# -- runs on a bus ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(bus: Bus, mode: str, concurrency: int = 2) -> AsyncIterator[Worker]:
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    if mode == "none":
        pipes["clustering"].source = ""  # no source to load in a child: the worker's threads
    orch = Orchestrator(bus)
    worker = Worker(bus, pipes, concurrency=concurrency, local=orch)
    if mode == "cold":
        worker.isolation = ColdIsolation(concurrency)
    await worker.register()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(orch.run(stop))]
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def runs(counts: dict[str, int], concurrency: int = 2, rounds: int = 1) -> dict[str, float]:
    """Runs per second of the example, ``counts[mode]`` runs started at once per mode, on
    a worker with ``concurrency`` slots; the modes alternate for ``rounds`` rounds and the
    best round of each counts (the least disturbed by the machine's other users)."""
    out: dict[str, float] = {}
    for mode, n in [item for _ in range(rounds) for item in counts.items()]:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            async with EmbeddedServer(home, sync="always") as server:
                settings = Settings(home=home, nats_url=server.url, replicas=1)
                async with open_bus(settings) as bus, serving(bus, mode, concurrency) as worker:
                    digest = await bus.artifacts.put(POINTS)
                    await concurrent_runs(bus, "clustering", 2, digest, f"{mode}-warmup")
                    seconds = await concurrent_runs(bus, "clustering", n, digest, mode)
                    spawned = worker.isolation.spawned
        out[mode] = max(out.get(mode, 0.0), n / seconds)
        note = f", {spawned} children started" if mode == "warm" else ""
        print(f"  runs, {mode}: {n} runs in {seconds:.1f} s, {n / seconds:.2f} runs/s{note}")
    return out


# -- sisas batch ------------------------------------------------------------------------


def batch_inputs(folder: Path, n: int) -> None:
    """``n`` inputs like the example's: its values, shuffled and jittered per input."""
    base = json.loads(POINTS)
    rnd = random.Random(1)
    folder.mkdir(parents=True)
    for i in range(n):
        values = [round(v + rnd.uniform(-0.05, 0.05), 4) if v >= 0 else v for v in base["values"]]
        rnd.shuffle(values)
        doc = {"name": f"sensors-{i:04d}", "values": values, "k": 3}
        (folder / f"in-{i:04d}.json").write_text(json.dumps(doc))


def _cpu_seconds(pid: int) -> tuple[str, float] | None:
    """(what the process is, its user + system CPU seconds) from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if "isolation_pool" in cmd:
        return "warm child", cpu
    if "sisas.services.isolation " in cmd + " ":
        return "cold child", cpu
    if "nats-server" in cmd:
        return "nats-server", cpu
    return "sisas batch", cpu


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                ]
    return found


def _sampled(
    cmd: list[str], env: dict[str, str], out_dir: Path
) -> tuple[int, str, str, dict[str, float]]:
    """Run ``cmd``; its exit code, stdout, stderr and the CPU seconds of its process tree
    by kind (sampled every 0.2 s: a child that lives shorter than that may be missed).
    Its output goes to files: a pipe nobody reads until the end would stall a command
    that prints more than the pipe holds (the summary of 1,000 runs)."""
    out_path, err_path = out_dir / "stdout", out_dir / "stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=err)
        seen: dict[int, tuple[str, float]] = {}
        while proc.poll() is None:
            for pid in _descendants(proc.pid):
                if (got := _cpu_seconds(pid)) is not None:
                    seen[pid] = got
            time.sleep(0.2)
    by_kind: dict[str, float] = {}
    for kind, cpu in seen.values():
        by_kind[kind] = by_kind.get(kind, 0.0) + cpu
    return proc.returncode, out_path.read_text(), err_path.read_text(), by_kind


def batch(n: int, profile: str | None) -> tuple[float, dict[str, float]]:
    """Runs per second of ``sisas batch`` over ``n`` inputs, start to exit, and the CPU
    milliseconds per run of each kind of process it ran."""
    with tempfile.TemporaryDirectory() as tmp:
        batch_inputs(Path(tmp) / "inputs", n)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SISAS_")}
        env["SISAS_HOME"] = str(Path(tmp) / "home")
        cmd = [str(SISAS)]
        if profile:
            cmd = [sys.executable, "-m", "cProfile", "-o", profile, "-m", "sisas.cli"]
        cmd += ["batch", "clustering", "--inputs", str(Path(tmp) / "inputs")]
        cmd += ["--pipelines", EXAMPLE, "--seed", "7", "--json"]
        t0 = time.perf_counter()
        code, out, err, cpu = _sampled(cmd, env, Path(tmp))
        seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"sisas batch failed ({code}): {err[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["completed"] == n, summary
    print(f"  sisas batch: {n} runs in {seconds:.1f} s, {n / seconds:.2f} runs/s")
    per_run = {kind: cpu[kind] / n * 1e3 for kind in sorted(cpu, key=lambda k: -cpu[k])}
    for kind, ms in per_run.items():
        print(f"    {kind:12s} {ms:6.1f} ms CPU per run ({cpu[kind] / seconds:.0%} of a core)")
    if profile:
        _where(profile)
    return n / seconds, per_run


def _where(profile: str) -> None:
    """The command's event loop (cProfile sees its main thread only), by part."""
    parts = {
        "asyncio event loop": ("asyncio/",),
        "nats-py client": ("nats/",),
        "socket send/recv, epoll (idle)": ("socket", "epoll", "selectors"),
        "waiting for a phase thread to start": ("acquire' of '_thread.lock",),
        "orchestrator and pure core": ("sisas/services/orchestrator", "sisas/handlers/"),
        "worker": ("sisas/services/worker",),
        "isolation pool": ("sisas/services/isolation",),
        "bus adapters": ("sisas/bus/",),
        "signals: codec, chain": ("sisas/signals/", "msgspec"),
        "batch command": ("sisas/cli/", "rich/"),
        "start-up: imports": ("importlib", "builtins.compile", "marshal", "builtins.exec"),
    }
    totals: dict[str, float] = dict.fromkeys([*parts, "other"], 0.0)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (file, _line, fn), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        where = f"{file}:{fn}"
        part = next((p for p, keys in parts.items() if any(k in where for k in keys)), "other")
        totals[part] += tottime
    whole = sum(totals.values())
    print(f"  where the command's event loop spent {whole:.1f} s (cProfile, main thread):")
    for part, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"    {part:38s} {seconds:6.1f} s  {seconds / whole:5.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attempts", type=int, default=200, help="warm and in-process attempts")
    p.add_argument("--cold-attempts", type=int, default=10)
    p.add_argument("--runs", type=int, default=40, help="runs started at once, per mode")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three modes")
    p.add_argument("--batch", type=int, default=200, help="inputs of `sisas batch` (0: skip)")
    p.add_argument("--profile", default=None, help="write a cProfile of the batch here")
    a = p.parse_args()

    per_attempt = asyncio.run(attempts(a.cold_attempts, a.attempts))
    for mode in MODES:
        print(f"  attempts, {mode}: {per_attempt[mode]:.1f}/s")
    per_run = asyncio.run(runs(dict.fromkeys(MODES, a.runs), rounds=a.rounds))
    batch_rate, batch_cpu = batch(a.batch, a.profile) if a.batch else (0.0, {})

    print(f"cluster attempt, cold child per attempt: {per_attempt['cold']:8.1f} attempts/s")
    print(
        f"cluster attempt, warm pool:              {per_attempt['warm']:8.1f} attempts/s "
        f"({per_attempt['warm'] / per_attempt['cold']:.0f}x cold)"
    )
    print(
        f"cluster attempt, in process:             {per_attempt['none']:8.1f} attempts/s "
        f"(warm is {per_attempt['warm'] / per_attempt['none']:.2f} of it)"
    )
    print(f"clustering runs, cold:                   {per_run['cold']:8.2f} runs/s")
    print(
        f"clustering runs, warm pool:              {per_run['warm']:8.2f} runs/s "
        f"({per_run['warm'] / per_run['cold']:.1f}x cold, "
        f"{per_run['warm'] / per_run['none']:.2f} of no isolation)"
    )
    print(f"clustering runs, no isolation:           {per_run['none']:8.2f} runs/s")
    if batch_rate:
        print(
            f"sisas batch of {a.batch}, warm pool:          {batch_rate:8.2f} runs/s "
            f"(aim 20: {batch_rate / 20:.2f} of it)"
        )
        loop_ms = batch_cpu.get("sisas batch", 0.0)
        cores = os.cpu_count() or 1
        print(
            f"  ceilings from CPU per run: the command's one event loop "
            f"{1000 / loop_ms if loop_ms else 0:.1f} runs/s; all its processes on {cores} "
            f"cores {cores * 1000 / sum(batch_cpu.values()):.1f} runs/s"
        )
    result = {
        "attempts_per_s": per_attempt,
        "runs_per_s": per_run,
        "batch_runs_per_s": batch_rate,
        "batch_inputs": a.batch,
        "batch_cpu_ms_per_run": batch_cpu,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
