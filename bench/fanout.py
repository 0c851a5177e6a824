"""A fan-out of N trivial items and a join: sisas against Temporal, Prefect and Dagster.

    .venv/bin/python -m bench fanout [--items 100 1000] [--rounds 2] [--runs 1]
                                     [--peers temporal,prefect,dagster] [--sync 2m]

Each round measures sisas, then each peer (bench/peers, its own venv), so the figures of
every side alternate on the shared machine; the p50 pools every round's runs.

- sisas: the ``fanwide`` pipeline (bench/pipelines.py: a phase returning N items, a phase
  mapped over them, a join) on a fresh embedded nats-server with ``sync_interval: always``
  (``--sync 2m``: fsynced every 2 minutes instead; Temporal's dev server keeps its SQLite
  in memory), an orchestrator and a worker (8 slots) in this process; after one untimed
  10-item run, each run timed from publishing ``start_run`` to seeing ``run_completed``.
  Per item: an attempt offered on the work stream, run in a worker slot, its report, its
  output stored by digest, its outcome decided into a hash-chained, fenced, fsynced commit
  of the log (group-committed with the other reports that wait).
- the peers: their scripts' ``--fanout`` (what each does per item is in their docstrings
  and docs/performance.md); each after one untimed 10-item run.

The rows (``bench all`` section ``fanout``): sisas's run p50 at each N, and for each peer
variant the ratio peer p50 / sisas p50 (above 1: sisas faster; aim: above 1 for each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peers.runner import run_peers
from bench.pipelines import wide
from bench.runs import timed_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.services.host import running_services

WARMUP_ITEMS = 10


async def sisas_fanout(
    items: list[int], runs: int, slots: int = 8, sync: str = "always"
) -> dict[int, list[float]]:
    """Wall ms of ``runs`` fan-outs of each width in ``items``, on a fresh server."""
    out: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedServer(Path(tmp) / "home", sync=sync) as server:
            settings = Settings(home=Path(tmp) / "home", nats_url=server.url, replicas=1)
            async with open_bus(settings) as bus:
                async with running_services(bus, {"fanwide": wide}, concurrency=slots):
                    digest = await bus.artifacts.put(str(WARMUP_ITEMS).encode())
                    await timed_runs(bus, "fanwide", 0, digest, "warm")
                    for n in items:
                        digest = await bus.artifacts.put(str(n).encode())
                        times = await timed_runs(bus, "fanwide", runs, digest, f"f{n}", False)
                        out[n] = [t * 1e3 for t in times]
    return out


def measure(
    items: list[int],
    rounds: int = 2,
    runs: int = 1,
    peers: set[str] | None = None,
    slots: int = 8,
    sync: str = "always",
) -> dict[str, Any]:
    """``rounds`` x (sisas, then every peer), each fan-out width ``runs`` times a round.

    Returns ``{"items", "rounds", "sisas": {N: {"times_ms", "run_ms_p50",
    "per_item_ms"}}, "peers": [pooled peer rows, and skipped ones], "load": [...]}``."""
    ours: dict[int, list[float]] = {n: [] for n in items}
    theirs: dict[tuple[str, str, int], dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []
    load: list[list[float]] = []
    for r in range(rounds):
        load.append(_loadavg())
        print(f"fanout round {r + 1}/{rounds}: sisas {items}", file=sys.stderr, flush=True)
        for n, times in asyncio.run(sisas_fanout(items, runs, slots, sync)).items():
            ours[n] += times
        for row in run_peers(0, peers, fanout=items, fanout_runs=runs):
            if "skipped" in row:
                skipped.append({**row, "round": r + 1})
                continue
            key = (row["peer"], row["variant"], row["items"])
            pooled = theirs.setdefault(key, {**row, "times_ms": []})
            pooled["times_ms"] += row["times_ms"]
    load.append(_loadavg())
    pooled_rows = []
    for row in theirs.values():
        p50 = statistics.median(row["times_ms"])
        pooled_rows.append(
            {
                **row,
                "runs": len(row["times_ms"]),
                "run_ms_p50": p50,
                "per_item_ms": p50 / row["items"],
            }
        )
    return {
        "items": items,
        "rounds": rounds,
        "worker_slots": slots,
        "sync": sync,
        "sisas": {
            str(n): {
                "times_ms": t,
                "run_ms_p50": statistics.median(t),
                "per_item_ms": statistics.median(t) / n,
            }
            for n, t in ours.items()
            if t
        },
        "peers": pooled_rows + _distinct(skipped),
        "load": load,
    }


def _distinct(skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in skipped:
        seen.setdefault((row["peer"], row["skipped"]), row)
    return list(seen.values())


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def report(r: dict[str, Any]) -> None:
    for n, s in r["sisas"].items():
        print(
            f"sisas fanwide: {int(n):,} items, p50 {s['run_ms_p50']:,.0f} ms "
            f"({s['per_item_ms']:.2f} ms an item, {len(s['times_ms'])} runs)"
        )
        for p in r["peers"]:
            if p.get("items") == int(n):
                ratio = p["run_ms_p50"] / s["run_ms_p50"]
                print(
                    f"  vs {p['peer']} {p['variant']}: p50 {p['run_ms_p50']:,.0f} ms "
                    f"({p['per_item_ms']:.2f} ms an item): ratio {ratio:.2f}"
                )
    for p in r["peers"]:
        if "skipped" in p:
            print(f"{p['peer']}: skipped ({p['skipped']})")
    print(f"load average at each round's start and at the end: {r['load']}")
    print(json.dumps(r))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--rounds", type=int, default=2, help="sisas then the peers, this often")
    p.add_argument("--runs", type=int, default=1, help="runs of each width per round")
    p.add_argument("--peers", default="", help="comma-separated subset of the peers")
    p.add_argument("--slots", type=int, default=8, help="phases sisas's worker runs at once")
    p.add_argument("--sync", default="always", help="sisas's server sync_interval (always)")
    a = p.parse_args()
    only = {x.strip() for x in a.peers.split(",") if x.strip()} or None
    report(measure(a.items, a.rounds, a.runs, only, a.slots, a.sync))
