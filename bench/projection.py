"""Signals folded into DuckDB per second on rebuild vs raw reading of the same stream.

    .venv/bin/python -m bench.projection [--signals N] [--rounds R]

Loads N signals of synthetic runs (bench/synthetic.py: 5 phases, contract and invariant
checks, retries and failures) into the log of an embedded nats-server, then, each in a
fresh child process so peak RSS is its own:

- raw:   read every message of the stream with the reader the projector uses (an
         ephemeral pull consumer whose messages skip nats-py's Msg layer), touching the
         bytes, no decoding: the limit; and, for reference, the same pull requests
         through nats-py's Msg layer and nats-py's ordered push consumer;
- fold:  `Projector.catch_up` from an empty DuckDB file: decode and verify every signal,
         evolve its run's state, write the rows and the checkpoint batch by batch;
- digest: the state digest over all tables (what `projections rebuild` computes twice).

and, with ``--jobs 1,2`` (the default), against the limits a fold or a verify cannot
beat, measured in the same run: read + decode every signal (msgspec, the strict
decoder, no other work), and read + decode + sha256 of every message:

- rebuild --jobs N:  `Projector.catch_up(jobs=N)` from an empty DuckDB file, N processes
                     folding shares of the runs and this one writing (N=1: the projector
                     alone); the state digest must be the same for every N;
- verify --jobs N:   `sisas replay verify --all --jobs N`, without the projection
                     (`--no-projection`) and with it (every table compared; the projection
                     file of the rebuild copied in first, so it is caught up).

Prints rates, ratios and peak RSS of each child (and of its folders or verifiers).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.synthetic import publish_runs
from sisas.bus.embedded import EmbeddedServer
from sisas.bus.jetstream_log import JetStreamLog
from sisas.bus.pull_reader import read_range, read_range_msgs
from sisas.bus.runtime import open_bus
from sisas.bus.settings import Settings
from sisas.client.verification import verify_log
from sisas.projections.projector import Projector
from sisas.projections.store import ProjectionStore
from sisas.services.query import projection_path
from sisas.services.rebuild import fold_in_processes
from sisas.signals.names import LOG_STREAM
from sisas.signals.records import decode_records


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(pid: int) -> float:
    """CPU seconds the nats-server process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_rss_mib() -> float:
    """The peak RSS of the largest child process that ended (folders, verifiers)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


async def load(settings: Settings, n: int) -> int:
    """Publish synthetic runs until ``n`` signals are stored; return the count."""
    async with open_bus(settings) as bus:
        stored, index = 0, 0
        while stored < n:
            stored += await publish_runs(bus.js, 200, start=index)
            index += 200
        return await bus.log.last_seq()


async def child_raw(url: str, how: str) -> dict[str, float]:
    settings = Settings(home=Path(tempfile.mkdtemp()), nats_url=url, replicas=1)
    async with open_bus(settings) as bus:
        last = await bus.log.last_seq()
        start, total, count = time.perf_counter(), 0, 0
        if how == "pull":  # what the projector reads with
            async for _, _, data in read_range(bus.nc, LOG_STREAM, "sisas.run.>", 1, last):
                total += len(data)
                count += 1
        elif how == "msgs":  # the same pull consumer through nats-py's Msg layer
            async for _, _, data in read_range_msgs(bus.nc, LOG_STREAM, "sisas.run.>", 1, last):
                total += len(data)
                count += 1
        elif how == "hash":  # the raw limit of verifying a stored hash chain: read, sha256
            sha = hashlib.sha256
            async for _, _, data in read_range(bus.nc, LOG_STREAM, "sisas.run.>", 1, last):
                total += len(sha(data).digest())
                count += 1
        elif how == "decode":  # the limit of any fold: read and decode every signal
            async for seq, subject, data in read_range(bus.nc, LOG_STREAM, "sisas.run.>", 1, last):
                count += len(decode_records(seq, subject, data))
                total += len(data)
        elif how == "decodehash":  # the limit of a verify: read, decode, sha256
            sha = hashlib.sha256
            async for seq, subject, data in read_range(bus.nc, LOG_STREAM, "sisas.run.>", 1, last):
                count += len(decode_records(seq, subject, data))
                total += len(sha(data).digest())
        else:  # nats-py's ordered push consumer
            async for seq, msg in JetStreamLog(bus.nc)._consume("sisas.run.>", 1):
                total += len(msg.data)
                count += 1
                if seq >= last:
                    break
        seconds = time.perf_counter() - start
    return {"messages": count, "bytes": total, "seconds": seconds, "rss_mib": _rss_mib()}


async def child_fold(url: str, path: str) -> dict[str, float]:
    settings = Settings(home=Path(tempfile.mkdtemp()), nats_url=url, replicas=1)
    async with open_bus(settings) as bus:
        store = ProjectionStore(Path(path))
        projector = Projector(bus.log, store, identity=await bus.log.identity())
        start = time.perf_counter()
        applied = await projector.catch_up()
        seconds = time.perf_counter() - start
        rss_fold = _rss_mib()
        start = time.perf_counter()
        store.digest()
        digest_seconds = time.perf_counter() - start
        store.close()
    return {
        "messages": applied,
        "seconds": seconds,
        "digest_seconds": digest_seconds,
        "rss_mib": rss_fold,
        "rss_after_digest_mib": _rss_mib(),
    }


def _vm_rss_mib() -> float:
    """This process's resident set now (not its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _RssSampler:
    """VmRSS once a second while it runs: whether the peak is flat in the log's length."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(_vm_rss_mib())

    def quartiles(self) -> list[float]:
        """The largest sample of each quarter of the run."""
        self._stop.set()
        self._thread.join()
        n = len(self.samples)
        if n < 4:
            return []  # a fold of a few seconds: nothing to say of its shape
        cuts = [0, n // 4, n // 2, 3 * n // 4, n]
        return [max(self.samples[a:b], default=0.0) for a, b in itertools.pairwise(cuts)]


async def child_rebuild(url: str, path: str, jobs: int) -> dict[str, Any]:
    """``projections rebuild --jobs N``'s fold, timed: from an empty file to the end
    (``SISAS_REPLICAS`` set: the log's replicas on a cluster, as `sisas cluster up` says)."""
    replicas = int(os.environ.get("SISAS_REPLICAS", "1"))
    settings = Settings(home=Path(tempfile.mkdtemp()), nats_url=url, replicas=replicas)
    sampler = _RssSampler()
    async with open_bus(settings) as bus:
        store = ProjectionStore(Path(path))
        projector = Projector(
            bus.log,
            store,
            identity=await bus.log.identity(),
            shared_fold=functools.partial(fold_in_processes, settings),
        )
        start = time.perf_counter()
        applied = await projector.catch_up(jobs=jobs)
        seconds = time.perf_counter() - start
        rss = _rss_mib()
        quarters = sampler.quartiles()
        digest = store.digest()
        store.close()
    return {
        "messages": applied,
        "seconds": seconds,
        "rss_mib": rss,
        "rss_quarters_mib": quarters,
        "rss_with_digest_mib": _rss_mib(),
        "rss_children_mib": _children_rss_mib(),
        "cpu_self": _cpu(),
        "cpu_children": _cpu(resource.RUSAGE_CHILDREN),
        "digest": digest,
    }


async def child_verify_jobs(url: str, jobs: int, projection: str) -> dict[str, float]:
    """``sisas replay verify --all --jobs N`` (with the projection file ``projection``
    copied into the data folder, or without comparing when it is "")."""
    settings = Settings(home=Path(tempfile.mkdtemp()), nats_url=url, replicas=1)
    if projection:
        projection_path(settings).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(projection, projection_path(settings))
    async with open_bus(settings) as bus:
        start = time.perf_counter()
        result = await verify_log(bus, None, projection=bool(projection), jobs=jobs)
        seconds = time.perf_counter() - start
    assert result.intact, result.first
    if projection:
        assert {v.projection for v in result.verdicts} == {"equal"}
    return {
        "messages": result.signals,
        "seconds": seconds,
        "rss_mib": _rss_mib(),
        "rss_children_mib": _children_rss_mib(),
        "cpu_self": _cpu(),
        "cpu_children": _cpu(resource.RUSAGE_CHILDREN),
    }


async def child_breakdown(url: str, n: int) -> dict[str, float]:
    """Where a rebuild's time goes, per signal, one step after the other in one thread:
    read + decode the first ``n`` signals (kept in memory), then the projector's fold
    (``fold_batch``: screen, rules, ``evolve``, rows) and its write (``store.write``:
    the appender, the checkpoint, the commit) of batches of 5,000."""
    settings = Settings(home=Path(tempfile.mkdtemp()), nats_url=url, replicas=1)
    records = []
    async with open_bus(settings) as bus:
        start = time.perf_counter()
        async for record in bus.log.follow(from_seq=1, to_seq=n):
            records.append(record)
        read = time.perf_counter() - start
    store = ProjectionStore(Path(tempfile.mkdtemp()) / "breakdown.duckdb")
    projector = Projector(bus.log, store)
    fold = write = 0.0
    for at in range(0, len(records), 5_000):
        t0 = time.perf_counter()
        batch = projector.fold_batch(records[at : at + 5_000])
        t1 = time.perf_counter()
        store.write(batch)
        write += time.perf_counter() - t1
        fold += t1 - t0
        for run_id, t in batch.states.items():
            projector._remember(run_id, t)
    store.close()
    per = 1e6 / len(records)
    return {
        "messages": len(records),
        "read_decode_us": read * per,
        "fold_us": fold * per,
        "write_us": write * per,
    }


def _timed_child(pid: int, *args: str) -> dict[str, Any]:
    """A child's result, with the CPU seconds the nats-server used meanwhile."""
    before = _server_cpu(pid)
    out = _child(*args)
    out["cpu_server"] = _server_cpu(pid) - before
    return out


def _cpu_note(r: dict[str, Any]) -> str:
    return (
        f"CPU s: this process {r['cpu_self']:.1f}, its folders/verifiers "
        f"{r['cpu_children']:.1f}, nats-server {r['cpu_server']:.1f}"
    )


def jobs_figures(
    url: str, tmp: str, stored: int, jobs: list[int], server_pid: int, max_rss: float = 0.0
) -> dict[str, float]:
    """Rebuild and verify with each of ``jobs`` against read+decode(+sha256), one round.
    ``max_rss``: the bound (MiB) on the peak RSS of the rebuild with one job; the bench
    fails past it (0: not checked)."""
    out: dict[str, float] = {}
    dec = _child("_raw", url, "decode")
    dhash = _child("_raw", url, "decodehash")
    assert dec["messages"] == dhash["messages"] == stored
    out["read_decode_per_s"] = dec["messages"] / dec["seconds"]
    out["read_decode_hash_per_s"] = dhash["messages"] / dhash["seconds"]
    print(
        f"  limits: read+decode {out['read_decode_per_s']:,.0f}/s, "
        f"read+decode+sha256 {out['read_decode_hash_per_s']:,.0f}/s",
        flush=True,
    )
    part = _child("_breakdown", url, str(min(stored, 200_000)))
    print(
        f"  per signal, one step after the other ({part['messages']:,} signals): read + "
        f"decode {part['read_decode_us']:.1f} µs, fold {part['fold_us']:.1f} µs, DuckDB "
        f"write {part['write_us']:.1f} µs",
        flush=True,
    )
    out.update({f"breakdown_{k}": float(v) for k, v in part.items()})
    digests = set()
    folded = ""
    for j in jobs:
        path = str(Path(tmp) / f"rebuild{j}.duckdb")
        r = _timed_child(server_pid, "_rebuild", url, path, str(j))
        assert r["messages"] == stored
        digests.add(r["digest"])
        folded = path
        rate = float(r["messages"]) / float(r["seconds"])
        out[f"rebuild_{j}j_per_s"] = rate
        out[f"rss_rebuild_{j}j_mib"] = float(r["rss_mib"])
        out[f"rss_rebuild_{j}j_folders_mib"] = float(r["rss_children_mib"])
        print(
            f"  rebuild --jobs {j}: {rate:,.0f}/s ({float(r['seconds']):.1f} s), ratio to "
            f"read+decode {rate / out['read_decode_per_s']:.2f}; peak RSS writer "
            f"{float(r['rss_mib']):.0f} MiB, largest folder "
            f"{float(r['rss_children_mib']):.0f} MiB; " + _cpu_note(r),
            flush=True,
        )
        quarters = ", ".join(f"{q:.0f}" for q in r["rss_quarters_mib"])
        shape = (
            f"{quarters} MiB (flat: bounded in the log's length)"
            if quarters
            else "too short to sample"
        )
        print(
            f"    RSS, the largest sample of each quarter of the fold: {shape}; with the "
            f"state digest after it {float(r['rss_with_digest_mib']):.0f} MiB",
            flush=True,
        )
        out[f"rebuild_{j}j_cpu_s"] = float(r["cpu_self"]) + float(r["cpu_children"])
        out[f"rebuild_{j}j_server_cpu_s"] = float(r["cpu_server"])
    assert len(digests) == 1, f"rebuilds with jobs {jobs} differ: {digests}"
    if max_rss and 1 in jobs:
        peak = out["rss_rebuild_1j_mib"]
        print(f"  peak RSS of the rebuild with one job: {peak:.0f} MiB (bound {max_rss:.0f} MiB)")
        assert peak <= max_rss, f"the rebuild's peak RSS {peak:.0f} MiB is past {max_rss:.0f} MiB"
    for label, projection in (("verify", ""), ("verify_proj", folded)):
        for j in jobs:
            v = _timed_child(server_pid, "_verifyjobs", url, str(j), projection)
            assert v["messages"] == stored
            rate = v["messages"] / v["seconds"]
            out[f"{label}_{j}j_per_s"] = rate
            out[f"rss_{label}_{j}j_mib"] = max(v["rss_mib"], v["rss_children_mib"])
            what = "with the projection" if projection else "--no-projection"
            print(
                f"  verify --all --jobs {j} {what}: {rate:,.0f}/s ({v['seconds']:.1f} s), "
                f"ratio to read+decode+sha256 {rate / out['read_decode_hash_per_s']:.2f}; "
                f"peak RSS {v['rss_mib']:.0f} MiB, largest child {v['rss_children_mib']:.0f} MiB; "
                + _cpu_note(v),
                flush=True,
            )
            out[f"{label}_{j}j_cpu_s"] = v["cpu_self"] + v["cpu_children"]
            out[f"{label}_{j}j_server_cpu_s"] = v["cpu_server"]
    for j in jobs[1:]:
        for label in ("rebuild", "verify", "verify_proj"):
            out[f"{label}_{j}j_speedup"] = out[f"{label}_{j}j_per_s"] / out[f"{label}_1j_per_s"]
    return out


async def child_verify(url: str) -> dict[str, float]:
    """What ``sisas replay verify --all --no-projection`` does, timed."""
    settings = Settings(home=Path(tempfile.mkdtemp()), nats_url=url, replicas=1)
    async with open_bus(settings) as bus:
        start = time.perf_counter()
        result = await verify_log(bus, None, projection=False)
        seconds = time.perf_counter() - start
    assert result.intact, result.first
    return {"messages": result.signals, "seconds": seconds, "rss_mib": _rss_mib()}


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.projection", *args], capture_output=True, check=False
    )
    if out.returncode:
        raise RuntimeError(f"bench child {args[0]} failed: {out.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def main(
    n: int, rounds: int, jobs: list[int] | None = None, max_rss: float = 0.0
) -> dict[str, float]:
    """Load ``n`` signals, then read and fold them ``rounds`` times; the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"

        async def serve_and_load() -> dict[str, float]:
            async with EmbeddedServer(home, sync="2m") as server:
                settings = Settings(home=home, nats_url=server.url, replicas=1)
                start = time.perf_counter()
                stored = await load(settings, n)
                took = time.perf_counter() - start
                print(
                    f"loaded {stored:,} signals into {LOG_STREAM} in {took:.1f} s "
                    f"({stored / took:,.0f}/s, sync_interval 2m); server {server.url}",
                    flush=True,
                )
                raws, folds, digests, rss_raw, rss_fold, ordered = [], [], [], [], [], []
                hashes: list[float] = []
                msgs: list[float] = []
                verifies: list[float] = []
                for r in range(rounds):
                    push = await asyncio.to_thread(_child, "_raw", server.url, "ordered")
                    ordered.append(push["messages"] / push["seconds"])
                    pulled = await asyncio.to_thread(_child, "_raw", server.url, "msgs")
                    msgs.append(pulled["messages"] / pulled["seconds"])
                    raw = await asyncio.to_thread(_child, "_raw", server.url, "pull")
                    path = str(Path(tmp) / f"fold{r}.duckdb")
                    fold = await asyncio.to_thread(_child, "_fold", server.url, path)
                    assert raw["messages"] == fold["messages"] == stored
                    hashed = await asyncio.to_thread(_child, "_raw", server.url, "hash")
                    verified = await asyncio.to_thread(_child, "_verify", server.url)
                    assert verified["messages"] == hashed["messages"] == stored
                    hashes.append(hashed["messages"] / hashed["seconds"])
                    verifies.append(verified["messages"] / verified["seconds"])
                    raws.append(raw["messages"] / raw["seconds"])
                    folds.append(fold["messages"] / fold["seconds"])
                    digests.append(fold["messages"] / fold["digest_seconds"])
                    rss_raw.append(raw["rss_mib"])
                    rss_fold.append(fold["rss_mib"])
                    print(
                        f"  round {r + 1}: raw read {raws[-1]:,.0f}/s (ordered consumer "
                        f"{ordered[-1]:,.0f}/s), fold {folds[-1]:,.0f}/s "
                        f"({fold['seconds']:.1f} s), digest {fold['digest_seconds']:.1f} s, "
                        f"peak RSS raw {raw['rss_mib']:.0f} MiB, fold {fold['rss_mib']:.0f} MiB; "
                        f"read+sha256 {hashes[-1]:,.0f}/s, replay verify {verifies[-1]:,.0f}/s",
                        flush=True,
                    )
                raw_rate, fold_rate = statistics.median(raws), statistics.median(folds)
                print(f"medians over {rounds} round(s), {stored:,} signals:")
                print(f"  raw read (sisas raw reader, no decoding)  {raw_rate:>10,.0f} signals/s")
                print(
                    f"  raw read (nats-py Msg, same pull requests) "
                    f"{statistics.median(msgs):>9,.0f} signals/s"
                )
                print(
                    f"  raw read (nats-py ordered consumer)       "
                    f"{statistics.median(ordered):>10,.0f} signals/s"
                )
                print(f"  fold into DuckDB (catch-up from empty)    {fold_rate:>10,.0f} signals/s")
                print(
                    f"  state digest over all tables              "
                    f"{statistics.median(digests):>10,.0f} rows/s of signals"
                )
                print(f"  ratio fold / raw read (pull reader)       {fold_rate / raw_rate:>10.2f}")
                print(
                    f"  ratio fold / ordered-consumer read        "
                    f"{fold_rate / statistics.median(ordered):>10.2f}"
                )
                print(
                    f"  peak RSS: raw reader {max(rss_raw):.0f} MiB, "
                    f"projector {max(rss_fold):.0f} MiB"
                )
                extra = (
                    await asyncio.to_thread(
                        jobs_figures, server.url, tmp, stored, jobs, server.pid, max_rss
                    )
                    if jobs
                    else {}
                )
                return {
                    **extra,
                    "signals": stored,
                    "raw_read_per_s": raw_rate,
                    "ordered_read_per_s": statistics.median(ordered),
                    "msgs_read_per_s": statistics.median(msgs),
                    "fold_per_s": fold_rate,
                    "digest_rows_per_s": statistics.median(digests),
                    "rss_raw_mib": max(rss_raw),
                    "rss_fold_mib": max(rss_fold),
                    "read_hash_per_s": statistics.median(hashes),
                    "verify_from_server_per_s": statistics.median(verifies),
                }

        return asyncio.run(serve_and_load())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        print(json.dumps(asyncio.run(child_raw(sys.argv[2], sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_verify":
        print(json.dumps(asyncio.run(child_verify(sys.argv[2]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_fold":
        print(json.dumps(asyncio.run(child_fold(sys.argv[2], sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_rebuild":
        print(json.dumps(asyncio.run(child_rebuild(sys.argv[2], sys.argv[3], int(sys.argv[4])))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_breakdown":
        print(json.dumps(asyncio.run(child_breakdown(sys.argv[2], int(sys.argv[3])))))
    elif len(sys.argv) > 1 and sys.argv[1] == "_verifyjobs":
        run = child_verify_jobs(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        print(json.dumps(asyncio.run(run)))
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        parser.add_argument("--signals", type=int, default=1_000_000)
        parser.add_argument("--rounds", type=int, default=1)
        parser.add_argument(
            "--jobs",
            default="1,2",
            help="rebuild and verify with each of these --jobs (comma-separated; '' skips)",
        )
        parser.add_argument(
            "--max-rss",
            type=float,
            default=300.0,
            help="fail if the rebuild with one job peaks past this many MiB (0: no check)",
        )
        args = parser.parse_args()
        jobs = [int(j) for j in args.jobs.split(",") if j]
        main(args.signals, args.rounds, jobs, args.max_rss)
