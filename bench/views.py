"""The dashboard's run page against run size: build cost and bytes, 100 to 10,000 items.

    .venv/bin/python -m bench.views [--sizes 100,1000,10000] [--rounds R]

In this process, no server: the log of one run fanning out over N items (bench/fold.py's
``run_log``: every 50th item retried once) is handed to what ``GET /api/runs/RUN`` does
after reading the log, the best of ``--rounds``:

- page:   screen and index the run's records (``screened_detail``), build the bounded
          summary (``run_view``) and encode it: the CPU of one page load;
- reload: a live page's reload once the dashboard holds the run's index: take in the
          run's last 50 signals (``RunIndex.catch_up``), build and encode the summary;
- items:  one page of 50 of the fan-out's items, failed and retried first;
- checks: one page of 50 of one check group's checks;
- bytes:  the summary's JSON, what each open page downloads per reload;
- walk:   the reference: reading each signal of the log once (bench/fold.py's walk).

The page's cost per item should be flat (ratio ``largest / smallest`` near 1, printed;
``walk`` shows what a log that no longer fits the CPU's caches costs alone)
and its bytes should not grow with the items: a fan-out is one row, one timeline lane
and one group per check, whatever its size. The two pages cost O(items) each (they
filter and sort the whole fan-out); the dashboard keeps the run's detail between them,
so they never read or fold the log again while the run is unchanged.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from bench.fold import _walk as walk
from bench.fold import run_log
from sisas.dashboard.index import RunIndex
from sisas.dashboard.views import checks_page, items_page, run_view, screened_detail
from sisas.signals import StoredSignal

__all__ = ["measure"]

MEASURES = ("page", "reload", "items", "checks", "walk")


def _cpu(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def _page(records: list[StoredSignal]) -> bytes:
    return msgspec.json.encode(run_view(detail=screened_detail(records)))


def _reload(index: RunIndex, new: list[StoredSignal]) -> bytes:
    assert index.catch_up(new)
    return msgspec.json.encode(run_view(detail=index.detail))


def measure(sizes: tuple[int, ...], rounds: int = 3) -> dict[str, Any]:
    """Per-item CPU microseconds of a page load and of one item and check page, and
    the page's bytes, at each size; the per-item ratio of the largest to the smallest."""
    warm, _ = run_log(10, "views-warm-up")
    _page([StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(warm, 1)])
    levels = []
    for n in sizes:
        signals, _ = run_log(n, f"views-{n}")
        records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
        best = dict.fromkeys(MEASURES, float("inf"))
        body = b""
        for _ in range(rounds):
            cpu, out = _cpu(functools.partial(_page, records))
            best["page"], body = min(best["page"], cpu), bytes(out)  # type: ignore[arg-type]
            held = RunIndex.of(records[:-50])
            cpu, _ = _cpu(functools.partial(_reload, held, records[-50:]))
            best["reload"] = min(best["reload"], cpu)
            detail = screened_detail(records)
            cpu, _ = _cpu(functools.partial(items_page, detail, "work", limit=50))
            best["items"] = min(best["items"], cpu)
            group = "work/contract/exit:int"
            cpu, _ = _cpu(functools.partial(checks_page, detail, group=group, limit=50))
            best["checks"] = min(best["checks"], cpu)
            cpu, _ = _cpu(functools.partial(walk, signals))
            best["walk"] = min(best["walk"], cpu)
        row: dict[str, Any] = {"items": n, "signals": len(signals), "bytes": len(body)}
        row |= {f"{m}_us": best[m] / n * 1e6 for m in MEASURES}
        row["page_ms"] = best["page"] * 1e3
        row["reload_ms"] = best["reload"] * 1e3
        levels.append(row)
        print(
            f"  {n:>6,} items ({len(signals):>7,} signals): page {row['page_ms']:7.1f} ms, "
            f"reload {row['reload_ms']:5.1f} ms, "
            + ", ".join(f"{m} {row[f'{m}_us']:5.2f}" for m in MEASURES)
            + f" us/item; page JSON {len(body):,} bytes",
            flush=True,
        )
    first, last = levels[0], levels[-1]
    ratios = {m: last[f"{m}_us"] / first[f"{m}_us"] for m in MEASURES}
    ratios["bytes"] = last["bytes"] / first["bytes"]
    print(
        f"  at {last['items']:,} / at {first['items']:,} items: per item "
        + ", ".join(f"{m} {ratios[m]:.2f}x" for m in MEASURES)
        + f"; page bytes {ratios['bytes']:.2f}x",
        flush=True,
    )
    return {"levels": levels, "ratios": ratios}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(json.dumps(measure(tuple(int(x) for x in a.sizes.split(",")), a.rounds)))
