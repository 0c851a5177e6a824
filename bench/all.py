"""Every benchmark in one run: one table, ``bench/results/latest.json`` and a plot.

    .venv/bin/python -m bench all [--quick] [--skip peers,projection,...] [--out DIR]

Sections, each against the raw limit of its part measured in the same run (see
docs/performance.md for what every figure means):

- overhead:   7-phase no-op chain and a 100-wide fan-out, per phase vs one raw
              JetStream publish-and-ack; the chain also with ``sync_interval: 2m``;
- workers:    runs per second with 1, 2 and 4 worker processes;
- peers:      Temporal, Prefect 3, Dagster, each in its own venv (bench/peers), the
              same 7-step no-op workflow, as ratios to the sisas chain of this run;
- fanout:     a fan-out of 100 and 1,000 no-op items and a join in sisas and in each
              peer (Temporal activities, Prefect ``.map``, Dagster ``DynamicOut``),
              alternated twice (bench/fanout.py): aim, sisas faster than each;
- append:     signals appended per second vs raw nats-py publishes (pipelined, one by one);
- projection: rebuild rate vs raw stream read rate; peak memory of the projector;
- replay:     verify rate vs raw sha256 of the same bytes; rerun overhead;
- scale:      per-run wall time with 10 to 10,000 runs in the log;
- fold:       per-item CPU cost of decide, fold and verify of one fan-out, 100 to 10,000
              items (in process): flat in the number of items;
- views:      the dashboard's run page of one fan-out, 100 to 10,000 items (in process):
              its build cost per item flat, its bytes bounded.

A section that fails is reported with its error and the rest still run (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    append,
    fanout,
    fold,
    overhead,
    projection,
    replay,
    scale,
    views,
    workers,
    writepath,
)
from bench.peers.runner import run_peers
from bench.report import Row, machine, print_table, rows_for, write_results

SECTIONS = (
    "overhead",
    "workers",
    "peers",
    "fanout",
    "append",
    "projection",
    "replay",
    "scale",
    "fold",
)
SECTIONS += ("writepath", "views")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Sizes:
    """How much each section does; ``QUICK`` is for a look in a minute and the tests."""

    chain_runs: int = 30
    fanout_runs: int = 5
    worker_runs: int = 60
    worker_counts: tuple[int, ...] = (1, 2, 4)
    peer_runs: int = 20
    fanout_items: tuple[int, ...] = (100, 1000)
    fanout_rounds: int = 2
    fanout_runs: int = 1
    append_one_by_one: int = 3000
    append_pipelined: int = 20_000
    append_runs: int = 500
    append_rounds: int = 3
    projection_signals: int = 1_000_000
    replay_signals: int = 200_000
    replay_rounds: int = 3
    reruns: int = 5
    scale_levels: tuple[int, ...] = (10, 100, 1000, 10_000)
    scale_runs: int = 8
    fold_items: tuple[int, ...] = (100, 1000, 10_000)
    fold_rounds: int = 3
    view_items: tuple[int, ...] = (100, 1000, 10_000)
    view_rounds: int = 3
    write_runs: int = 30
    write_concurrent: int = 50
    write_items: tuple[int, ...] = (100, 1000, 10_000)


QUICK = Sizes(
    chain_runs=5,
    fanout_runs=1,
    worker_runs=8,
    worker_counts=(1, 2),
    peer_runs=3,
    fanout_items=(20,),
    fanout_rounds=1,
    append_one_by_one=300,
    append_pipelined=2000,
    append_runs=50,
    append_rounds=1,
    projection_signals=5000,
    replay_signals=5000,
    replay_rounds=1,
    reruns=1,
    scale_levels=(10, 100),
    scale_runs=3,
    fold_items=(100, 1000),
    fold_rounds=1,
    view_items=(100, 1000, 2000),
    view_rounds=1,
    write_runs=5,
    write_concurrent=10,
    write_items=(100,),
)


def _sections(sizes: Sizes, peers: set[str] | None) -> dict[str, Callable[[], Any]]:
    s = sizes
    return {
        "overhead": lambda: {
            "always": asyncio.run(overhead.measure(s.chain_runs, s.fanout_runs, "always")),
            "2m": asyncio.run(overhead.measure(s.chain_runs, 1, "2m")),
        },
        "workers": lambda: asyncio.run(workers.measure(s.worker_runs, s.worker_counts)),
        "peers": lambda: run_peers(s.peer_runs, peers),
        "fanout": lambda: fanout.measure(
            list(s.fanout_items), s.fanout_rounds, s.fanout_runs, peers
        ),
        "append": lambda: asyncio.run(
            append.main(
                s.append_one_by_one, s.append_pipelined, s.append_runs, "always", s.append_rounds
            )
        ),
        "projection": lambda: projection.main(s.projection_signals, 1),
        "replay": lambda: replay.measure(s.replay_signals, s.replay_rounds, s.reruns),
        "scale": lambda: asyncio.run(scale.measure(s.scale_levels, s.scale_runs)),
        "fold": lambda: fold.measure(s.fold_items, s.fold_rounds),
        "writepath": lambda: asyncio.run(
            writepath.measure(s.write_runs, s.write_concurrent, list(s.write_items))
        ),
        "views": lambda: views.measure(s.view_items, s.view_rounds),
    }


def run_all(sizes: Sizes, skip: set[str], out: Path, peers: set[str] | None = None) -> int:
    """Run the sections not in ``skip``; print the table; write JSON and PNG into ``out``.

    Returns the exit code: 0 when every section ran, 1 when one failed."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, fn in _sections(sizes, peers).items():
        if name in skip:
            continue
        print(f"== {name}", flush=True)
        try:
            results[name] = fn()
        except Exception as exc:  # a failed section is reported, the others still run
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"!! {name} failed: {errors[name]}", flush=True)
    rows: list[Row] = rows_for(results)
    meta = machine()
    print_table(rows, meta, errors)
    json_path, png_path = write_results(out, meta, results, rows, errors)
    print(f"results: {json_path}\nplot:    {png_path}")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench all", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a look in a few minutes")
    ap.add_argument("--skip", default="", help=f"comma-separated sections to skip: {SECTIONS}")
    ap.add_argument("--only", default="", help="comma-separated sections to run (default all)")
    ap.add_argument("--peers", default="", help="comma-separated peers (temporal,prefect,dagster)")
    ap.add_argument("--peer-runs", type=int, default=0, help="measured runs per peer variant")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for latest.json and .png")
    args = ap.parse_args(argv)
    names = {x.strip() for x in f"{args.skip},{args.only}".split(",") if x.strip()}
    if names - set(SECTIONS):
        ap.error(f"unknown section(s) {sorted(names - set(SECTIONS))}; known: {SECTIONS}")
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if only:
        skip |= set(SECTIONS) - only
    sizes = QUICK if args.quick else Sizes()
    if args.peer_runs:
        sizes = Sizes(**{**sizes.__dict__, "peer_runs": args.peer_runs})
    peers = {x.strip() for x in args.peers.split(",") if x.strip()} or None
    return run_all(sizes, skip, args.out, peers)


if __name__ == "__main__":
    raise SystemExit(main())
