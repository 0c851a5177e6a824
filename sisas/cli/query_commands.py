"""``sisas runs``, ``show``, ``manifest``, ``stats``, ``projections``: the projection's view.

Each asks the projector of a running ``sisas up`` over NATS, or folds the log into the
data folder's DuckDB file itself when nothing serves queries. ``--json`` prints the
answer's documented fields (docs/cli.md) and nothing else on stdout.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from sisas.bus.queries import Answer, ask
from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.bars import progress_bar
from sisas.cli.render import STATUS_STYLE
from sisas.projections.queries import parse_since
from sisas.signals import check_name
from sisas.telemetry import trace_id_hex

__all__ = ["artifact", "manifest", "projections", "runs", "show", "stats"]

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (fields in docs/cli.md).")


async def _ask(verb: str, params: dict[str, Any], *, timeout: float = 30.0) -> Answer:
    async with open_bus(load_settings(), name=f"sisas-{verb}") as bus:
        with progress_bar() as on_progress:
            answer = await ask(bus, verb, params, on_progress=on_progress, timeout=timeout)
    if answer.lag:
        err_console.print(
            f"[yellow]note:[/] the projection is {answer.lag} signals behind the log "
            "(the projector is still catching up)"
        )
    return answer


def _when(text: str | None) -> str:
    return (text or "-").replace("T", " ").removesuffix("Z").split(".")[0]


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _short(digest: str | None, n: int = 12) -> str:
    return (digest or "-").removeprefix("sha256:")[:n]


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, 'white')}]{s}[/]"


@cli.command()
@click.option("--pipeline", "-p", default="", help="Only runs of this pipeline.")
@click.option(
    "--status",
    "-s",
    type=click.Choice(["requested", "running", "completed", "failed", "cancelled"]),
    help="Only runs in this status.",
)
@click.option("--since", help="Only runs started since: 2026-11-01, 2026-11-01T12:00Z, 30m, 2d.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@_JSON
@run_async
async def runs(
    pipeline: str, status: str | None, since: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first: status, start, duration, failed phase, fingerprint."""
    params: dict[str, Any] = {"limit": limit}
    if pipeline:
        params["pipeline"] = pipeline
    if status:
        params["status"] = status
    if since:
        params["since"] = parse_since(since, datetime.now(UTC)).isoformat()
    answer = await _ask("runs", params)
    rows: list[dict[str, Any]] = answer.result
    if as_json:
        print(json.dumps({"as_of": answer.as_of, "runs": rows}))
        return
    if not rows:
        console.print("no runs" + (" match" if params.keys() - {"limit"} else " yet") + ".")
        return
    table = Table(title=f"runs (log position {answer.as_of})", title_justify="left")
    for col in (
        "run",
        "pipeline",
        "version",
        "status",
        "started",
        "duration",
        "failed phase",
        "fingerprint",
    ):
        table.add_column(col, no_wrap=col in ("run", "started"))
    for r in rows:
        table.add_row(
            r["run_id"],
            r["pipeline"],
            r["version"] or "-",
            _status(r["status"]),
            _when(r["started_at"] or r["requested_at"]),
            _secs(r["duration"]),
            r["failed_phase"] or "",
            _short(r["fingerprint"]),
        )
    console.print(table)


@cli.command()
@click.argument("run_id")
@_JSON
@run_async
async def show(run_id: str, as_json: bool) -> None:
    """A run's phases, every contract and invariant check, and its links.

    Exit code 0 for a run that completed (or is still going), 1 for one that failed or
    was cancelled, 2 for an unknown run.
    """
    check_name(run_id, "run id")
    answer = await _ask("show", {"run_id": run_id})
    d = answer.result
    run = d["run"]
    if as_json:
        print(json.dumps({"as_of": answer.as_of, "trace_id": trace_id_hex(run_id), **d}))
    else:
        _print_run(d)
    if run["status"] in ("failed", "cancelled"):
        sys.exit(1)


def _print_run(d: dict[str, Any]) -> None:
    run, links = d["run"], d["links"]
    console.print(
        f"[bold]{run['run_id']}[/] pipeline [cyan]{run['pipeline']}[/] {run['version']} "
        f"{_status(run['status'])}  started {_when(run['started_at'] or run['requested_at'])}"
        f"  duration {_secs(run['duration'])}  seed {run['seed']}  signals {run['signals']}"
    )
    if run["error_kind"]:
        console.print(
            f"  [red]{run['error_kind']}[/] in {run['failed_phase'] or 'the run'}: "
            f"{run['error_message']}"
        )
    console.print(f"  fingerprint {run['fingerprint'] or '-'}")
    console.print(f"  code        {run['code_fingerprint'] or '-'}")
    console.print(f"  trace       {trace_id_hex(run['run_id'])} (OpenTelemetry trace id)")
    link_text = []
    if links["resumed_from"]:
        link_text.append(f"resumed from {links['resumed_from']}")
    if links["resumed_by"]:
        link_text.append(f"resumed by {', '.join(links['resumed_by'])}")
    if links["batch_id"]:
        link_text.append(f"batch {links['batch_id']} ({links['batch_runs']} runs)")
    if link_text:
        console.print("  " + "; ".join(link_text))
    phases = Table(title="phases", title_justify="left")
    for col in ("phase", "status", "attempts", "ran", "wall", "output", "error"):
        phases.add_column(col)
    for p in d["phases"]:
        error = f"{p['error_kind']}: {p['error_message']}" if p["error_kind"] else ""
        if p["skip_reason"]:
            error = f"skipped: {p['skip_reason']}"
        if p.get("quarantined"):
            error += f" [yellow](output quarantined: sisas artifact {p['quarantined']})[/]"
        items = f" x{p['items']}" if p["items"] else ""
        phases.add_row(
            p["name"] + items,
            _status(p["status"]),
            str(p["attempts"]),
            _secs(p["duration"]) if p["attempts"] else "-",
            _secs(p["wall"]),
            _short(p["output_digest"]),
            error,
        )
    console.print(phases)
    checks = d["checks"]
    failed = [c for c in checks if not c["passed"]]
    console.print(
        f"checks: {len(checks)} ({sum(c['type'] == 'contract' for c in checks)} contract, "
        f"{sum(c['type'] == 'invariant' for c in checks)} invariant), "
        + (f"[red]{len(failed)} failed[/]" if failed else "[green]all passed[/]")
    )
    table = Table(show_header=True)
    for col in ("seq", "phase", "check", "outcome", "detail"):
        table.add_column(col)
    shown = failed + [c for c in checks if c["type"] == "invariant" and c["passed"]]
    for c in sorted(shown, key=lambda c: c["seq"])[:40]:
        where = c["phase"] + (f"[{c['item']}]" if c["item"] is not None else "")
        name = f"{c['boundary']}:{c['name']}" if c["type"] == "contract" else c["name"]
        table.add_row(
            str(c["seq"]),
            where,
            name,
            "[green]passed[/]" if c["passed"] else "[red]failed[/]",
            _detail(c),
        )
    if shown:
        console.print(table)
    console.print(
        f"[dim]all checks: sisas show {run['run_id']} --json · "
        f"manifest: sisas manifest {run['run_id']}[/]"
    )


def _detail(c: dict[str, Any]) -> str:
    detail = c["detail"]
    if c["type"] == "contract":
        return "; ".join(f"{v['path']}: {v['message']}" for v in detail.get("violations", []))
    return f"observed {detail.get('observed')!r}, expected {detail.get('expected')!r}"


@cli.command()
@click.argument("run_id")
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it to FILE."
)
@run_async
async def manifest(run_id: str, out: Path | None) -> None:
    """Print (or write) the run manifest as JSON.

    Pipeline version and the fingerprint of its code and contracts, seed, input digest,
    resolved configuration, per-phase summaries and counters, durations, output digests
    and artifact locations.
    """
    check_name(run_id, "run id")
    answer = await _ask("manifest", {"run_id": run_id})
    text = json.dumps(answer.result, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    _write(out, text.encode())
    err_console.print(f"manifest of {run_id} written to {out}")


def _write(out: Path, data: bytes) -> None:
    try:
        out.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write to {out}: {exc.strerror}; pick a writable path")


@cli.command()
@click.option("--pipeline", "-p", default="", help="Only this pipeline.")
@_JSON
@run_async
async def stats(pipeline: str, as_json: bool) -> None:
    """Per-phase duration percentiles, success and retry rates, check failures."""
    answer = await _ask("stats", {"pipeline": pipeline} if pipeline else {})
    d = answer.result
    if as_json:
        print(json.dumps({"as_of": answer.as_of, **d}))
        return
    if not d["pipelines"]:
        console.print("no runs yet." if not pipeline else f"no runs of {pipeline}.")
        return
    for p in d["pipelines"]:
        console.print(
            f"[bold]{p['pipeline']}[/]: {p['runs']} runs, {p['completed']} completed, "
            f"{p['failed']} failed, {p['cancelled']} cancelled, {p['active']} active; "
            f"run duration p50 {_secs(p['duration_p50'])} p95 {_secs(p['duration_p95'])} "
            f"p99 {_secs(p['duration_p99'])}"
        )
        table = Table(show_header=True)
        for col in (
            "phase",
            "runs",
            "success",
            "retry rate",
            "p50",
            "p95",
            "p99",
            "contract fails",
            "invariant fails",
        ):
            table.add_column(col, justify="left" if col == "phase" else "right")
        for ph in d["phases"]:
            if ph["pipeline"] != p["pipeline"]:
                continue
            table.add_row(
                ph["phase"],
                str(ph["runs"]),
                _pct(ph["success_rate"]),
                _pct(ph["retry_rate"]),
                _secs(ph["duration_p50"]),
                _secs(ph["duration_p95"]),
                _secs(ph["duration_p99"]),
                f"{ph['contract_failures']}/{ph['contract_checks']}",
                f"{ph['invariant_failures']}/{ph['invariant_checks']}",
            )
        console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@cli.group()
def projections() -> None:
    """The DuckDB projection: rebuild it from the log, see where it stands."""


@projections.command()
@_JSON
@run_async
async def rebuild(as_json: bool) -> None:
    """Drop the tables, fold the whole log again, compare state digests before and after.

    Exit code 0 when the digests are equal, 1 when they differ.
    """
    answer = await _ask("rebuild", {}, timeout=120.0)
    r = answer.result
    if as_json:
        print(json.dumps(r))
    else:
        console.print(f"folded {r['stream_seq']} stream messages in {r['seconds']:.2f} s")
        console.print(f"state digest before  {r['before']}")
        console.print(f"state digest after   {r['after']}")
        console.print("[green]equal[/]" if r["equal"] else "[red]DIFFERENT[/]")
    if not r["equal"]:
        sys.exit(1)


@projections.command(name="status")
@_JSON
@run_async
async def projection_status(as_json: bool) -> None:
    """Where the projection stands against the log, and its table sizes."""
    answer = await _ask("status", {})
    r = answer.result
    if as_json:
        print(json.dumps({**r, "served_by": answer.served_by}))
        return
    console.print(
        f"projection {r['path']} (served by {answer.served_by}): at stream sequence "
        f"{r['applied_seq']} of {r['log_last_seq']}"
    )
    for name, n in r["tables"].items():
        console.print(f"  {name:<11} {n}")


@projections.command()
@_JSON
@run_async
async def digest(as_json: bool) -> None:
    """The state digest of the projection as it stands (caught up with the log)."""
    answer = await _ask("digest", {})
    r = answer.result
    if as_json:
        print(json.dumps(r))
    else:
        console.print(f"{r['digest']} at stream sequence {r['stream_seq']}")


@cli.command()
@click.argument("digest")
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it to FILE."
)
@run_async
async def artifact(digest: str, out: Path | None) -> None:
    """Fetch a phase output by its bytes digest (the `artifact` of `sisas manifest`).

    The bytes are verified against DIGEST before they are written. Exit 2 if no
    artifact has that digest.
    """
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        fail(
            f"{digest!r} is not an artifact digest (sha256:<64 hex>); copy it from `sisas manifest`"
        )
    async with open_bus(load_settings(), name="sisas-artifact") as bus:
        data = await bus.artifacts.get(digest)
    if out is None:
        sys.stdout.buffer.write(data)
        return
    _write(out, data)
    err_console.print(f"{len(data)} bytes written to {out}")
