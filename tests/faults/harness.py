"""What the fault cases share: sisas processes to kill, runs to start, and the checks.

Every case ends with :func:`check_runs`: each run's log has every signal of a clean
reference run exactly once (nothing lost, nothing duplicated; a worker taking over an
attempt adds a ``phase_started`` naming it, by design), the same fingerprint, a valid
chain; then :func:`check_whole_log`: ``sisas replay verify --all`` passes and the
projection's state digest equals a rebuild from the log.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus
from sisas.signals import ENDING_KINDS, Signal, StoredSignal, verify_chain
from tests.cli_process import SISAS, base_env, sisas
from tests.runs import ROOT, start


def env_for(url: str, home: Path, **extra: str) -> dict[str, str]:
    return base_env(
        SISAS_NATS_URL=url,
        SISAS_HOME=str(home),
        SISAS_REPLICAS=extra.pop("SISAS_REPLICAS", "1"),
        SISAS_TIMEOUT="3",
        PYTHONPATH=str(ROOT),
        **extra,
    )


@dataclass
class Role:
    """A sisas process (``worker``, ``orchestrator``, ``projector``) that can be killed;
    ``module`` runs instead of the CLI when given (e.g. ``tests.faults.beside``)."""

    args: list[str]
    env: dict[str, str]
    logs: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    module: str | None = None

    def start(self, failpoints: str = "") -> Role:
        self.starts += 1
        env = {**self.env, "SISAS_FAILPOINTS": failpoints}
        name = "-".join(a for a in self.args[:1]) if self.module is None else "beside"
        command = SISAS if self.module is None else [sys.executable, "-m", self.module]
        with open(self.logs / f"{name}-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*command, *self.args],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_by_kill(self) -> bool:
        """Whether it is dead from a SIGKILL (a failpoint fired); counted once."""
        if self.proc is not None and self.proc.poll() == -signal.SIGKILL:
            self.kills += 1
            self.proc = None
            return True
        return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.kills += 1
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Counts:
    """What a case found, printed in the test output."""

    case: str
    runs: int = 0
    signals: int = 0
    lost: int = 0
    duplicated: int = 0
    takeovers: int = 0
    kills: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f"  ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"{self.case}: runs {self.runs}, signals {self.signals}, kills {self.kills}, "
            f"lost {self.lost}, duplicated {self.duplicated}, takeovers {self.takeovers}{extra}"
        )


async def signals_of(bus: Bus, run_id: str) -> list[Signal]:
    records = await bus.log.read_run(run_id)
    signals = [r.signal for r in records if isinstance(r, StoredSignal)]
    assert len(signals) == len(records), f"{run_id}: corrupt messages in the log"
    return signals


async def ended(bus: Bus, run_id: str) -> bool:
    try:
        last = await bus.log.last_of_run(run_id)
    except Exception:  # a server restarting or a cluster between leaders
        return False
    return isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS


async def wait_all(
    bus: Bus,
    run_ids: list[str],
    timeout: float = 120,
    tick: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Wait until every run ended; ``tick`` (a coroutine function) runs each round."""
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            await tick()
        done = [r for r in run_ids if await ended(bus, r)]
        if len(done) == len(run_ids):
            return
        if time.monotonic() > deadline:
            missing = sorted(set(run_ids) - set(done))
            raise AssertionError(f"runs not ended after {timeout:.0f}s: {missing}")
        await asyncio.sleep(0.1)


async def registered(bus: Bus, pipeline: str) -> None:
    """Wait until a worker registered ``pipeline``'s plan."""
    registry = PlanRegistry(bus.js)
    for _ in range(600):
        if await registry.get(pipeline) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pipeline} never registered")


async def reference(bus: Bus, pipeline: str, data: bytes) -> list[Signal]:
    """The signals of a clean run ``ref-<pipeline>`` on ``data``, to compare the cases'
    runs with."""
    await start(bus, pipeline, f"ref-{pipeline}", data)
    await wait_all(bus, [f"ref-{pipeline}"])
    for _ in range(100):  # the run ended: its read holds the end (a replica may lag)
        signals = await signals_of(bus, f"ref-{pipeline}")
        if signals and signals[-1].kind in ENDING_KINDS:
            return signals
        await asyncio.sleep(0.05)
    raise AssertionError(f"ref-{pipeline} ended, but reading it does not show the end")


async def count_kind(bus: Bus, run_id: str, kind: str) -> int:
    return sum(s.kind == kind for s in await signals_of(bus, run_id))


def _key(s: Signal) -> tuple[str, str, int, object]:
    return (s.kind, s.phase, s.attempt, getattr(s.body, "item", None))


def _comparable(signals: list[Signal]) -> collections.Counter[tuple[str, str, int, object]]:
    return collections.Counter(_key(s) for s in signals if s.kind != "phase_started")


async def check_runs(bus: Bus, run_ids: list[str], reference: list[Signal], counts: Counts) -> None:
    """Each run has exactly the reference run's signals (``phase_started`` may repeat
    for a takeover), the same outputs and fingerprint, and a valid chain."""
    want = _comparable(reference)
    ref_end = reference[-1]
    for run_id in run_ids:
        got = await signals_of(bus, run_id)
        assert verify_chain(got, run_id=run_id) == [], f"{run_id}: chain broken"
        have = _comparable(got)
        lost, dup = want - have, have - want
        counts.lost += sum(lost.values())
        counts.duplicated += sum(dup.values())
        assert not lost and not dup, f"{run_id}: lost {dict(lost)}, duplicated {dict(dup)}"
        started = collections.Counter(
            (s.phase, s.attempt, getattr(s.body, "item", None))
            for s in got
            if s.kind == "phase_started"
        )
        counts.takeovers += sum(n - 1 for n in started.values())
        finished = {
            (s.phase, s.attempt, getattr(s.body, "item", None))
            for s in got
            if s.kind in ("phase_completed", "phase_failed", "phase_timed_out")
        }
        assert finished <= set(started), f"{run_id}: attempts ended without starting"
        assert got[-1].kind == ref_end.kind == "run_completed", f"{run_id} ended {got[-1].kind}"
        for attr in ("fingerprint", "outputs"):
            assert getattr(got[-1].body, attr) == getattr(ref_end.body, attr), (
                f"{run_id}: {attr} differs from the reference run"
            )
        counts.runs += 1
        counts.signals += len(got)
    ids = [s.id for r in run_ids for s in await signals_of(bus, r)]
    assert len(ids) == len(set(ids))


def check_whole_log(env: dict[str, str], counts: Counts) -> None:
    """``replay verify --all`` passes; the projection's digest equals a rebuild."""
    verify = sisas("replay", "verify", "--all", "--json", env=env, timeout=180)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    rebuild = sisas("projections", "rebuild", "--json", env=env, timeout=180)
    assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    result = json.loads(rebuild.stdout)
    assert result["equal"] and result["before"] == result["after"]
    counts.notes.append("verify ok, projection digest = rebuild")


REPORTED: list[str] = []
"""Every line :func:`report` printed, shown again at the end of the test session."""


def report(counts: list[Counts]) -> None:
    """Print the counts of every repetition; tests/faults/conftest.py repeats them in
    pytest's terminal summary, so they show in CI output without ``-s``."""
    for c in counts:
        print(c.line())
        REPORTED.append(c.line())
    total = Counts(case="total")
    for c in counts:
        total.runs += c.runs
        total.lost += c.lost
        total.duplicated += c.duplicated
        total.kills += c.kills
    summary = (
        f"{counts[0].case.split(' #')[0]}: {len(counts)} repetitions, {total.runs} runs, "
        f"{total.kills} kills, lost {total.lost}, duplicated {total.duplicated}"
    )
    print(summary)
    REPORTED.append(summary)
