"""Fan-out bookkeeping: per-item CPU cost of decide, fold and verify, 100 to 10,000 items.

    .venv/bin/python -m bench.fold [--sizes 100,1000,10000] [--rounds R] [--profile STAGE]

In this process, no server, no phase executed. The pipeline is ``source`` (returns the
list) -> ``work`` (a fan-out over it) -> ``total`` (gathers ``work``). The pure
``decide`` is driven with the reports a worker sends for each attempt: a start, then an
entry and an exit contract check and the completion (every 50th item fails its first
attempt and is retried once). Three figures per size, each the CPU time
(``time.process_time``) of the whole run divided by its number of items, the best of
``--rounds``:

- decide: every ``decide`` call of the run (its own fold of what it decided included);
- fold:   ``fold(signals)`` of the run's log (``evolve`` once per signal);
- verify: ``replay verify`` of the run's stored records (chain and placement rules,
          ``evolve``, then the state digest);
- walk:   the reference: reading each signal of the log once (its link and item), no
          bookkeeping at all.

Flat means nothing on an item's path rescans the fan-out: the per-item cost at 10,000
items should match the one at 100, ratio ``largest / smallest`` near 1 (printed). Not
quite 1 even so: a 10,000-item run's log and state no longer fit the CPU's caches, and
``walk`` shows what that alone costs. ``--profile decide|fold|verify`` prints cProfile's
top functions at the largest size; its count of function calls divided by the items is
the machine-independent measure (flat when the work per item is).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sisas.handlers.orchestrator import decide
from sisas.handlers.state import RunState, evolve, fold
from sisas.pipeline import Context, Pipeline
from sisas.replay.verify import LogVerifier, report
from sisas.signals import ChainHead, Signal, StoredSignal
from sisas.signals.inputs import ContractResult, Input, PhaseReport, StartRun
from sisas.signals.kinds import ErrorInfo
from sisas.signals.plan import PipelinePlan

__all__ = ["STAGES", "measure", "run_log"]

STAGES = ("decide", "fold", "verify")
MEASURES = (*STAGES, "walk")
AT = datetime(2026, 11, 1, tzinfo=UTC)
RETRY_EVERY = 50
"""Every 50th item fails its first attempt (retryable) and completes on its retry."""

fanned = Pipeline("fold_bench", version="1")


@fanned.phase()
def source(ctx: Context, input: int) -> list[int]:
    return list(range(input))


@fanned.phase(map_over="source", retries=1, backoff=0.01)
def work(ctx: Context, item: int) -> int:
    return item


@fanned.phase()
def total(ctx: Context, work: list[int]) -> int:
    return len(work)


def _digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


class _Driver:
    """Feeds ``decide`` one input at a time and keeps the run's state and log."""

    def __init__(self, plan: PipelinePlan, run_id: str) -> None:
        self.plans = {plan.name: plan}
        self.state = RunState.new(plan.name, run_id)
        self.signals: list[Signal] = []
        self.cpu = 0.0
        self._n = 0

    def send(self, inp: Input) -> list[Signal]:
        t0 = time.process_time()
        new = decide(self.state, inp, self.plans)
        self.cpu += time.process_time() - t0
        for s in new:
            self.state = evolve(self.state, s)
        self.signals.extend(new)
        return new

    def report(self, phase: str, attempt: int, item: int | None, status: str, **kw: object) -> None:
        self._n += 1
        self.send(
            PhaseReport(
                id=f"{self.state.run_id}:r{self._n}",
                pipeline=self.state.pipeline,
                run_id=self.state.run_id,
                at=AT,
                phase=phase,
                attempt=attempt,
                item=item,
                worker="w1",
                status=status,  # type: ignore[arg-type]
                **kw,  # type: ignore[arg-type]
            )
        )

    def attempt(self, phase: str, attempt: int, item: int | None, n: int, **kw: object) -> None:
        """A started report, then the outcome: completed (or failed when ``fail``)."""
        self.report(phase, attempt, item, "started")
        checks = [
            ContractResult(contract="item:int", boundary="entry", passed=True),
            ContractResult(contract="int", boundary="exit", passed=True),
        ]
        if kw.pop("fail", False):
            error = ErrorInfo(kind="HardFailure", message="first attempt", retryable=True)
            self.report(
                phase, attempt, item, "failed", error=error, duration=0.001, contracts=checks[:1]
            )
            return
        self.report(
            phase,
            attempt,
            item,
            "completed",
            output_digest=_digest(n),
            artifact=_digest(n + 1),
            duration=0.001,
            contracts=checks,
            **kw,
        )


def run_log(items: int, run_id: str = "fold-1") -> tuple[list[Signal], float]:
    """The log of one run fanning out over ``items`` items, and the CPU seconds its
    ``decide`` calls took."""
    d = _Driver(fanned.plan(), run_id)
    d.send(
        StartRun(
            id=f"{run_id}:start",
            pipeline=fanned.name,
            run_id=run_id,
            at=AT,
            seed=7,
            input_digest=_digest(items),
        )
    )
    d.attempt("source", 0, None, 1, item_count=items)
    for i in range(items):
        if i % RETRY_EVERY == RETRY_EVERY - 1:
            d.attempt("work", 0, i, 0, fail=True)
            d.attempt("work", 1, i, 10 + i)
        else:
            d.attempt("work", 0, i, 10 + i)
    d.attempt("total", 0, None, 2)
    assert d.state.status == "completed", d.state.error
    return d.signals, d.cpu


def _cpu(fn: Callable[[], object]) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _verify(signals: list[Signal]) -> None:
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
    verdict = report(LogVerifier().extend(records))
    assert verdict.intact, verdict


def _walk(signals: list[Signal]) -> None:
    for s in signals:
        ChainHead.after(s)
        getattr(s.body, "item", None)


def measure(sizes: tuple[int, ...], rounds: int = 3) -> dict[str, object]:
    """Per-item CPU microseconds of each stage (and of the walk) at each size, the best
    of ``rounds``, and each one's ratio of its cost at the largest size to the smallest."""
    warm, _ = run_log(10, "fold-warm-up")  # imports, caches: not an item's cost
    fold(warm)
    _verify(warm)
    levels = []
    for n in sizes:
        best = {stage: float("inf") for stage in MEASURES}
        signals: list[Signal] = []
        for r in range(rounds):
            signals, decide_cpu = run_log(n, f"fold-{n}-{r}")
            best["decide"] = min(best["decide"], decide_cpu)
            best["fold"] = min(best["fold"], _cpu(functools.partial(fold, signals)))
            best["verify"] = min(best["verify"], _cpu(functools.partial(_verify, signals)))
            best["walk"] = min(best["walk"], _cpu(functools.partial(_walk, signals)))
        row = {"items": n, "signals": len(signals)}
        row |= {f"{stage}_us": best[stage] / n * 1e6 for stage in MEASURES}
        levels.append(row)
        print(
            f"  {n:>6,} items ({len(signals):>7,} signals): "
            + ", ".join(f"{s} {row[f'{s}_us']:6.1f}" for s in MEASURES)
            + " us/item",
            flush=True,
        )
    first, last = levels[0], levels[-1]
    ratios = {s: last[f"{s}_us"] / first[f"{s}_us"] for s in MEASURES}
    print(
        f"  per-item cost at {last['items']:,} / at {first['items']:,} items: "
        + ", ".join(f"{s} {ratios[s]:.2f}x" for s in MEASURES),
        flush=True,
    )
    return {"levels": levels, "ratios": ratios}


def profile(stage: str, n: int, top: int = 25) -> None:
    """cProfile of one stage at ``n`` items: the ``top`` functions by own time."""
    prof = cProfile.Profile()
    if stage == "decide":
        prof.runcall(run_log, n)
    else:
        signals, _ = run_log(n)
        prof.runcall(fold if stage == "fold" else _verify, signals)
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile", choices=STAGES, help="cProfile this stage at the largest size")
    a = p.parse_args()
    sizes = tuple(int(x) for x in a.sizes.split(","))
    if a.profile:
        profile(a.profile, sizes[-1])
    else:
        print(json.dumps(measure(sizes, a.rounds)))
