"""The table, the JSON and the plot of ``python -m bench all``.

Every row puts a sisas figure next to its reference measured in the same run (the raw
limit of the part, a peer orchestrator, or the same figure at the smallest size) and a
``ratio``: how sisas compares, always read the same way, **above 1 sisas is faster (or
higher), below 1 slower**: 0.5 means half the raw rate or twice the raw time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sisas.bus.embedded import find_binary

__all__ = ["Row", "machine", "markdown", "print_table", "rows_for", "write_results"]

FLAT = 1 / 1.5  # per-run cost at the largest log within 1.5x of the smallest


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    value: float | None
    unit: str
    reference: float | None = None
    reference_label: str = ""
    ratio: float | None = None
    aim: float | None = None
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.aim is None or self.ratio is None:
            return None
        return self.ratio >= self.aim


def _faster(ref_ms: float, ms: float) -> float:
    return ref_ms / ms if ms else 0.0


def _overhead(r: dict[str, Any]) -> list[Row]:
    a, b = r["always"], r["2m"]
    raw = "raw publish-and-ack"
    w = a["fanout_width"]
    return [
        Row("overhead", "7-phase chain, run p50", a["chain_run_ms_p50"], "ms"),
        Row(
            "overhead",
            "7-phase chain, per phase",
            a["chain_per_phase_ms"],
            "ms",
            a["raw_ack_ms"],
            raw,
            a["raw_ack_ms"] / a["chain_per_phase_ms"],
        ),
        Row(
            "overhead",
            f"{w}-wide fan-out, per phase ({w + 2} per run)",
            a["fanout_per_phase_ms"],
            "ms",
            a["raw_ack_ms"],
            raw,
            a["raw_ack_ms"] / a["fanout_per_phase_ms"],
            note=f"run p50 {a['fanout_run_ms_p50']:.0f} ms",
        ),
        Row(
            "overhead",
            "7-phase chain, per phase, sync_interval 2m",
            b["chain_per_phase_ms"],
            "ms",
            b["raw_ack_ms"],
            "raw publish-and-ack, 2m",
            b["raw_ack_ms"] / b["chain_per_phase_ms"],
            note=f"run p50 {b['chain_run_ms_p50']:.1f} ms",
        ),
    ]


def _workers(r: dict[str, float]) -> list[Row]:
    one = r.get("runs_per_s_1")
    rows = []
    for key, rate in r.items():
        k = int(key.rsplit("_", 1)[1])
        rows.append(
            Row(
                "workers",
                f"7-phase runs/s, {k} worker process{'es' if k > 1 else ''}",
                rate,
                "runs/s",
                one,
                "1 worker process",
                rate / one if one else None,
            )
        )
    return rows


def _peers(rows: list[dict[str, Any]], overhead: dict[str, Any] | None) -> list[Row]:
    out = []
    ours = overhead["always"]["chain_run_ms_p50"] if overhead else None
    ours_2m = overhead["2m"]["chain_run_ms_p50"] if overhead else None
    for p in rows:
        if "skipped" in p:
            out.append(Row("peers", p["peer"], None, "", note=f"skipped: {p['skipped']}"))
            continue
        label = f"{p['peer']} {p['variant']} ({p['version']})"
        ratio = _faster(p["run_ms_p50"], ours) if ours else None
        aim = 10.0 if (p["peer"], p["variant"]) == ("temporal", "local_activities") else None
        out.append(
            Row(
                "peers",
                f"7 steps vs {label}",
                ours,
                "ms/run",
                p["run_ms_p50"],
                f"{p['peer']} p50 ({p['per_step_ms']:.2f} ms/step)",
                ratio,
                aim,
            )
        )
        if aim is not None and ours_2m:
            out.append(
                Row(
                    "peers",
                    f"7 steps, sync_interval 2m, vs {label}",
                    ours_2m,
                    "ms/run",
                    p["run_ms_p50"],
                    f"{p['peer']} p50",
                    _faster(p["run_ms_p50"], ours_2m),
                    aim,
                    note="Temporal's dev server keeps its SQLite in memory",
                )
            )
    return out


def _fanout(r: dict[str, Any]) -> list[Row]:
    """A fan-out of N no-op items and a join: sisas's run p50 at each N (per item, and the
    per-item cost at the largest N against the smallest), then each peer's p50 against it
    (issue 19: sisas faster than each; every side alternated, runs pooled)."""
    rows: list[Row] = []
    ours = {int(n): s for n, s in r["sisas"].items()}
    for n, s in ours.items():
        rows.append(
            Row(
                "fanout",
                f"sisas: {n:,} items and a join, run p50",
                s["run_ms_p50"],
                "ms",
                note=f"{s['per_item_ms']:.2f} ms an item, {len(s['times_ms'])} runs, "
                f"{r.get('worker_slots', 8)} worker slots, "
                + (
                    "every write fsynced"
                    if r.get("sync", "always") == "always"
                    else f"sync_interval {r['sync']}"
                ),
            )
        )
    if len(ours) > 1:
        lo, hi = min(ours), max(ours)
        rows.append(
            Row(
                "fanout",
                f"sisas: per item at {hi:,} items",
                ours[hi]["per_item_ms"],
                "ms/item",
                ours[lo]["per_item_ms"],
                f"per item at {lo:,}",
                _faster(ours[lo]["per_item_ms"], ours[hi]["per_item_ms"]),
            )
        )
    for p in r["peers"]:
        if "skipped" in p:
            where = f" (round {p['round']})" if "round" in p else ""
            rows.append(
                Row("fanout", f"{p['peer']}{where}", None, "", note=f"skipped: {p['skipped']}")
            )
            continue
        n = int(p["items"])
        s = ours.get(n)
        if s is None:
            continue
        rows.append(
            Row(
                "fanout",
                f"{n:,} items vs {p['peer']} {p['variant']} ({p['version']})",
                s["run_ms_p50"],
                "ms/run",
                p["run_ms_p50"],
                f"{p['peer']} p50 ({p['per_item_ms']:.2f} ms/item, {p['runs']} runs)",
                _faster(p["run_ms_p50"], s["run_ms_p50"]),
                1.0,
                note=f"sisas {s['per_item_ms']:.2f} ms/item",
            )
        )
    return rows


def _append(r: dict[str, float]) -> list[Row]:
    return [
        Row(
            "append",
            "one by one",
            r["sisas_seq"],
            "signals/s",
            r["raw_seq"],
            "raw js.publish",
            r["sisas_seq"] / r["raw_seq"],
        ),
        Row(
            "append",
            "pipelined (runs concurrently, 1 signal/append)",
            r["sisas_pipe"],
            "signals/s",
            r["raw_pipe"],
            "raw js.publish_async",
            r["sisas_pipe"] / r["raw_pipe"],
            0.5,
        ),
        Row(
            "append",
            "pipelined (5 signals/append)",
            r["sisas_pipe5"],
            "signals/s",
            r["raw_pipe"],
            "raw js.publish_async",
            r["sisas_pipe5"] / r["raw_pipe"],
            0.5,
        ),
    ]


def _msgs_note(r: dict[str, float], rate: float) -> str:
    """The same rate against nats-py's own reader (a ``Msg`` per message)."""
    if "msgs_read_per_s" not in r:
        return ""
    msgs = r["msgs_read_per_s"]
    return f"nats-py Msg reader {msgs:,.0f}/s: ratio {rate / msgs:.2f}"


def _projection(r: dict[str, float]) -> list[Row]:
    n = int(r["signals"])
    return [
        Row(
            "projection",
            f"rebuild into DuckDB ({n:,} signals)",
            r["fold_per_s"],
            "signals/s",
            r["raw_read_per_s"],
            "raw stream read (sisas' raw reader)",
            r["fold_per_s"] / r["raw_read_per_s"],
            0.5,
            note=_msgs_note(r, r["fold_per_s"]),
        ),
        Row(
            "projection",
            f"peak memory, rebuild of {n:,} signals",
            r["rss_fold_mib"],
            "MiB",
            r["rss_raw_mib"],
            "raw reader's peak",
            note="bounded: 10,000 run states, 5,000-signal batches, 512 MB DuckDB pool",
        ),
        Row(
            "replay",
            f"verify the log from the server ({n:,} signals)",
            r["verify_from_server_per_s"],
            "signals/s",
            r["read_hash_per_s"],
            "raw read + sha256 of each message",
            r["verify_from_server_per_s"] / r["read_hash_per_s"],
            note="sisas replay verify --all --no-projection, reading included",
        ),
    ]


def _replay(r: dict[str, float]) -> list[Row]:
    rows = [
        Row(
            "replay",
            f"verify ({int(r['signals']):,} signals in memory)",
            r["verify_per_s"],
            "signals/s",
            r["raw_per_s"],
            "raw sha256 of the bytes",
            r["verify_per_s"] / r["raw_per_s"],
            0.5,
        ),
        Row(
            "replay",
            "verify, signed (ed25519 each)",
            r["verify_signed_per_s"],
            "signals/s",
            r["raw_per_s"],
            "raw sha256 of the bytes",
            r["verify_signed_per_s"] / r["raw_per_s"],
        ),
    ]
    for w in (1, 2):
        wall, compute = r[f"rerun_{w}w_wall_ms"], r[f"rerun_{w}w_compute_ms"]
        how = "in process" if w == 1 else f"{w} worker processes"
        rows.append(
            Row(
                "replay",
                f"rerun of the example run, {how}",
                wall,
                "ms",
                compute,
                "phases' own compute",
                compute / wall if wall else None,
            )
        )
    return rows


def _scale(levels: list[dict[str, float]]) -> list[Row]:
    if not levels:
        return []
    first = levels[0]
    rows = []
    for i, lv in enumerate(levels):
        rows.append(
            Row(
                "scale",
                f"run p50 with {int(lv['runs_in_log']):,} runs in the log",
                lv["run_ms_p50"],
                "ms",
                first["run_ms_p50"],
                f"p50 at {int(first['runs_in_log']):,} runs",
                _faster(first["run_ms_p50"], lv["run_ms_p50"]),
                FLAT if i == len(levels) - 1 and i > 0 else None,
                note=f"{int(lv['signals_in_log']):,} signals",
            )
        )
    return rows


def _fold(r: dict[str, Any]) -> list[Row]:
    """Per-item cost of each stage at the largest fan-out against the smallest: flat
    (ratio near 1) when nothing on an item's path rescans the fan-out."""
    levels = r["levels"]
    if len(levels) < 2:
        return []
    first, last = levels[0], levels[-1]
    walk = last["walk_us"] / first["walk_us"]
    return [
        Row(
            "fold",
            f"{stage} per item, fan-out of {last['items']:,}",
            last[f"{stage}_us"],
            "us/item",
            first[f"{stage}_us"],
            f"per item at {first['items']:,}",
            _faster(first[f"{stage}_us"], last[f"{stage}_us"]),
            FLAT,
            note=f"{last['signals']:,} signals; reading the log alone costs {walk:.2f}x",
        )
        for stage in ("decide", "fold", "verify")
    ]


def _views(r: dict[str, Any]) -> list[Row]:
    """The run page of the largest fan-out against the smallest: its build cost per item
    flat, its bytes bounded (no per-item data in it)."""
    levels = r["levels"]
    if len(levels) < 2:
        return []
    first, before, last = levels[0], levels[-2], levels[-1]
    walk = last["walk_us"] / first["walk_us"]
    return [
        Row(
            "views",
            f"run page build per item, fan-out of {last['items']:,}",
            last["page_us"],
            "us/item",
            first["page_us"],
            f"per item at {first['items']:,}",
            _faster(first["page_us"], last["page_us"]),
            FLAT,
            note=f"{last['page_ms']:.0f} ms a load; reading the log alone costs {walk:.2f}x",
        ),
        Row(
            "views",
            f"run page JSON, fan-out of {last['items']:,}",
            last["bytes"] / 1024,
            "KiB",
            before["bytes"] / 1024,
            f"at {before['items']:,} items",
            _faster(before["bytes"], last["bytes"]),
            FLAT,
            note=f"{first['bytes'] / 1024:.1f} KiB at {first['items']:,} (fewer retries listed)",
        ),
    ]


def _writepath(r: dict[str, Any]) -> list[Row]:
    """The write path against the raw fsynced publish-and-ack measured in the same run
    (issue 19's aims: run p50 <= 10 ms, <= 16 messages a run, runs/s x messages >= 0.7
    of the raw pipelined rate, a fan-out item <= 3x one raw publish-and-ack)."""
    raw = r["raw_ack_ms"]
    rows = [
        Row(
            "writepath",
            "7-phase no-op run, p50, every write fsynced",
            r["run_ms_p50"],
            "ms",
            10.0,
            "aim: 10 ms",
            _faster(10.0, r["run_ms_p50"]),
            1.0,
            note=f"raw publish-and-ack {raw:.2f} ms",
        ),
    ]
    if "skeleton_ms_p50" in r:  # results written before the skeleton was measured lack it
        rows.append(
            Row(
                "writepath",
                "7-phase no-op run, p50, against its I/O skeleton",
                r["run_ms_p50"],
                "ms",
                r["skeleton_ms_p50"],
                "9 fsynced acks + 7 thread hops in a row, nothing decided",
                _faster(r["skeleton_ms_p50"], r["run_ms_p50"]),
                note="the floor of a chain of thread-run phases in one process",
            )
        )
    rows += [
        Row(
            "writepath",
            "fsynced messages per 7-phase run",
            r["messages_per_run"],
            "msgs",
            16.0,
            "aim: 16",
            _faster(16.0, r["messages_per_run"]),
            1.0,
            note="commits, work offered, inputs, outputs stored",
        ),
        Row(
            "writepath",
            f"{r['concurrent']} runs at once: runs/s x messages per run",
            r["runs_per_s"] * r["messages_per_run"],
            "msgs/s",
            r["raw_pipelined_msgs_s"],
            "raw pipelined fsynced publishes",
            r["throughput_ratio"],
            0.7,
            note=f"{r['runs_per_s']:.1f} runs/s",
        ),
    ]
    for key in sorted(k for k in r if k.endswith("_ms_per_item")):
        n = int(key.split("_")[1])
        rows.append(
            Row(
                "writepath",
                f"fan-out of {n:,} items, per item, end to end",
                r[key],
                "ms/item",
                raw,
                "one raw publish-and-ack",
                _faster(3 * raw, r[key]),
                1.0,
                note=f"{r[f'fanout_{n}_s']:.2f} s in all; aim: <= 3x raw",
            )
        )
    return rows


def rows_for(results: dict[str, Any]) -> list[Row]:
    """The table's rows for whatever sections ``results`` holds."""
    rows: list[Row] = []
    if "overhead" in results:
        rows += _overhead(results["overhead"])
    if "workers" in results:
        rows += _workers(results["workers"])
    if "peers" in results:
        rows += _peers(results["peers"], results.get("overhead"))
    if "fanout" in results:
        rows += _fanout(results["fanout"])
    if "append" in results:
        rows += _append(results["append"])
    if "projection" in results:
        rows += _projection(results["projection"])
    if "replay" in results:
        rows += _replay(results["replay"])
    if "scale" in results:
        rows += _scale(results["scale"])
    if "fold" in results:
        rows += _fold(results["fold"])
    if "writepath" in results:
        rows += _writepath(results["writepath"])
    if "views" in results:
        rows += _views(results["views"])
    return rows


def _read(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    repo = Path(__file__).resolve().parent.parent
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _read("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": _read("/proc/meminfo", "MemTotal"),
        "os": platform.platform(),
        "python": platform.python_version(),
        "nats_server": _run([str(find_binary()), "--version"]),
        "commit": _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]),
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms/item":
        return f"{value:,.2f} {unit}"
    if unit in ("ms", "ms/run"):
        return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    if unit in ("runs/s", "us/item"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.3f}" if ratio < 0.1 else f"{ratio:.2f}"


def print_table(rows: list[Row], meta: dict[str, Any], errors: dict[str, str]) -> None:
    table = Table(
        title=f"sisas benchmarks, {meta['date']}, {meta['cores']} cores, {meta['cpu']}",
        caption="ratio: above 1 sisas is faster/higher than the reference, below 1 slower",
    )
    for col in ("section", "measure", "sisas", "reference", "ratio", "aim", "met"):
        table.add_column(col, justify="right" if col in ("sisas", "ratio", "aim") else "left")
    for r in rows:
        ref = f"{_fmt(r.reference, r.unit)} {r.reference_label}".strip() if r.reference else ""
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[r.met]
        measure = f"{r.measure}\n[dim]{r.note}[/]" if r.note else r.measure
        table.add_row(
            r.section,
            measure,
            _fmt(r.value, r.unit),
            ref if r.reference else "",
            _ratio(r.ratio),
            f">= {r.aim:.2f}" if r.aim else "",
            met,
        )
    for name, err in errors.items():
        table.add_row(name, f"[red]failed: {err}[/]", "", "", "", "", "")
    Console(width=160).print(table)


def markdown(rows: list[Row], meta: dict[str, Any], errors: dict[str, str]) -> str:
    """The table as Markdown, for docs/performance.md."""
    lines = [
        f"Measured {meta['date']} on {meta['cores']} cores ({meta['cpu']}), {meta['memory']}, "
        f"Python {meta['python']}, {meta['nats_server']}, commit {meta['commit']}.",
        "",
        "| section | measure | sisas | reference | ratio | aim | met |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        ref = f"{_fmt(r.reference, r.unit)} {r.reference_label}".strip() if r.reference else ""
        measure = f"{r.measure} ({r.note})" if r.note else r.measure
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        aim = f"≥ {r.aim:.2f}" if r.aim else ""
        lines.append(
            f"| {r.section} | {measure} | {_fmt(r.value, r.unit)} | {ref} | "
            f"{_ratio(r.ratio)} | {aim} | {met} |"
        )
    lines += [f"| {name} | failed: {err} | | | | | |" for name, err in errors.items()]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[Row], results: dict[str, Any], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if r.ratio is not None and r.ratio > 0]
    fig, axes = plt.subplots(1, 3, figsize=(19, max(5.0, 0.33 * len(ratios) + 1.5)))
    ax = axes[0]
    labels = [f"{r.section}: {r.measure}" for r in ratios]
    colors = ["tab:green" if r.met else "tab:red" if r.met is False else "tab:blue" for r in ratios]
    ax.barh(range(len(ratios)), [r.ratio for r in ratios], color=colors)
    for i, r in enumerate(ratios):
        if r.aim:
            ax.plot([r.aim, r.aim], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_yticks(range(len(ratios)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the reference (>1: sisas faster); black tick: aim")
    ax.set_title("sisas vs its limits and peers")

    ax = axes[1]
    bars: list[tuple[str, float]] = []
    if "overhead" in results:
        bars.append(
            ("sisas (fsync every signal)", results["overhead"]["always"]["chain_run_ms_p50"])
        )
        bars.append(("sisas (sync 2m)", results["overhead"]["2m"]["chain_run_ms_p50"]))
    for p in results.get("peers", []):
        if "skipped" not in p:
            bars.append((f"{p['peer']} {p['variant']}", p["run_ms_p50"]))
    if bars:
        ax.barh(range(len(bars)), [b[1] for b in bars], color="tab:purple")
        ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(b[1] for b in bars) * 1.2)
        for i, (_, ms) in enumerate(bars):
            ax.text(ms, i, f" {ms:.1f} ms", va="center", fontsize=8)
    ax.set_xlabel("wall time per run of 7 no-op steps, p50 (ms)")
    ax.set_title("7-step no-op workflow, same machine, same run")

    ax = axes[2]
    levels = results.get("scale", [])
    if levels:
        xs = [lv["runs_in_log"] for lv in levels]
        ax.plot(xs, [lv["run_ms_p50"] for lv in levels], marker="o", label="p50")
        ax.plot(xs, [lv["run_ms_p90"] for lv in levels], marker="x", label="p90")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.legend()
    ax.set_xlabel("runs in the log")
    ax.set_ylabel("7-phase run wall time (ms)")
    ax.set_title("per-run cost as the log grows")
    fig.suptitle(f"sisas bench all: {meta['date']}, {meta['cores']} cores, commit {meta['commit']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    out: Path,
    meta: dict[str, Any],
    results: dict[str, Any],
    rows: list[Row],
    errors: dict[str, str],
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "latest.json", out / "latest.png"
    doc = {
        "machine": meta,
        "rows": [{**asdict(r), "met": r.met} for r in rows],
        "results": results,
        "errors": errors,
    }
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(markdown(rows, meta, errors))
    _plot(png_path, rows, results, meta)
    return json_path, png_path
