"""``sisas runs``, ``show``, ``manifest``, ``stats``, ``projections``: the projection's view.

Each asks the projector of a running ``sisas up`` over NATS, or folds the log into the
data folder's DuckDB file itself when nothing serves queries. ``--json`` prints the
answer's documented fields (docs/cli.md) and nothing else on stdout.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from sisas.bus.runtime import Bus, open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.bars import progress_bar
from sisas.cli.render import (
    Cell,
    Column,
    command_name,
    dropped_note,
    duration_text,
    fit_table,
    status_text,
    traceback_tail,
)
from sisas.cli.tags import tag_option
from sisas.client.queries import Answer, ask
from sisas.errors import ArtifactNotFound, UnknownRun
from sisas.projections.queries import parse_since
from sisas.services.admission import waiting_note
from sisas.signals import PhaseFailed, StoredSignal, check_name
from sisas.signals.summary import first_line, scalar_text
from sisas.telemetry import trace_id_hex

__all__ = ["artifact", "manifest", "projections", "runs", "show", "stats"]

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (fields in docs/cli.md).")


async def _ask(verb: str, params: dict[str, Any], *, timeout: float = 30.0) -> Answer:
    async with open_bus(load_settings(), name=f"sisas-{verb}") as bus:
        return await _ask_on(bus, verb, params, timeout=timeout)


async def _ask_on(
    bus: Bus, verb: str, params: dict[str, Any], *, timeout: float = 30.0, quiet: bool = False
) -> Answer:
    with progress_bar() as on_progress:
        answer = await ask(bus, verb, params, on_progress=on_progress, timeout=timeout)
    if answer.lag and not quiet:
        err_console.print(
            f"[yellow]note:[/] the projection is {answer.lag} signals behind the log "
            "(the projector is still catching up)"
        )
    return answer


def _when(text: str | None) -> str:
    return (text or "-").replace("T", " ").removesuffix("Z").split(".")[0]


def _short(digest: str | None, n: int = 12) -> str:
    return (digest or "-").removeprefix("sha256:")[:n]


@cli.command()
@click.option("--pipeline", "-p", default="", help="Only runs of this pipeline.")
@click.option(
    "--status",
    "-s",
    type=click.Choice(["requested", "running", "completed", "failed", "cancelled"]),
    help="Only runs in this status.",
)
@click.option("--since", help="Only runs started since: 2026-11-01, 2026-11-01T12:00Z, 30m, 2d.")
@click.option(
    "--tampered", is_flag=True, help="Only runs with a signal `sisas replay verify` flags."
)
@tag_option("Only runs with this tag (repeat: all of them), e.g. --tag team=data.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@_JSON
@run_async
async def runs(
    pipeline: str,
    status: str | None,
    since: str | None,
    tampered: bool,
    tags: dict[str, str],
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first: status, start, duration, failed phase, fingerprint.

    A run marked TAMPERED holds a signal that `sisas replay verify` flags (one appended
    by someone other than the orchestrator): it is shown without that signal.
    """
    params: dict[str, Any] = {"limit": limit}
    if pipeline:
        params["pipeline"] = pipeline
    if status:
        params["status"] = status
    if since:
        params["since"] = parse_since(since, datetime.now(UTC)).isoformat()
    if tampered:
        params["tampered"] = True
    if tags:
        params["tags"] = tags
    answer = await _ask("runs", params)
    rows: list[dict[str, Any]] = answer.result
    if as_json:
        print(json.dumps({"as_of": answer.as_of, "runs": rows}))
        return
    if not rows:
        console.print("no runs" + (" match" if params.keys() - {"limit"} else " yet") + ".")
        return
    rows_out: list[list[Cell]] = [
        [
            r["run_id"],
            _run_status(r),
            _when(r["started_at"] or r["requested_at"]),
            r["failed_phase"] or "",
            duration_text(r["duration"]),
            r["pipeline"],
            r["version"] or "-",
            _short(r["fingerprint"]),
            " ".join(f"{k}={v}" for k, v in sorted((r.get("tags") or {}).items())),
        ]
        for r in rows
    ]
    table, dropped = fit_table(
        _RUN_COLUMNS, rows_out, width=console.width, title=f"runs (log position {answer.as_of})"
    )
    console.print(table)
    if dropped:
        console.print(dropped_note(dropped, console.width))
    forged = [r["run_id"] for r in rows if r["tampered"]]
    if forged:
        example = forged[0]
        console.print(
            Text(
                f"{len(forged)} TAMPERED: signals `replay verify` flags in their logs are "
                f"left out of what is shown; which and why: {command_name()} show {example}",
                "red",
            )
        )


_TAMPERED = ("TAMPERED", "bold red")


def _run_status(run: dict[str, Any]) -> Text:
    """The run's status, and the mark of a run a flagged signal was left out of."""
    if not run["tampered"]:
        return status_text(run["status"])
    return Text.assemble(status_text(run["status"]), " ", _TAMPERED)


_RUN_COLUMNS = (
    Column("run"),
    Column("status"),
    Column("started", keep=60),
    Column("failed phase", keep=70),
    Column("duration", keep=50, justify="right"),
    Column("pipeline", keep=30),  # a run id starts with its pipeline's name
    Column("version", keep=20),
    Column("fingerprint", keep=10),
    Column("tags", keep=5, wrap=16),  # left out when no run listed has any
)
"""What ``sisas runs`` shows, and what a narrow terminal drops first (lowest ``keep``):
the run id and status are never dropped nor cut."""


@cli.command()
@click.argument("run_id")
@_JSON
@run_async
async def show(run_id: str, as_json: bool) -> None:
    """A run's phases, every contract and invariant check, and its links.

    Exit code 0 for a run that completed (or is still going), 1 for one that failed, was
    cancelled or is marked tampered (a signal verify flags was left out of what is
    shown), 2 for an unknown run.
    """
    check_name(run_id, "run id")
    async with open_bus(load_settings(), name="sisas-show") as bus:
        try:
            answer = await _ask_on(bus, "show", {"run_id": run_id})
        except UnknownRun:
            if not (waiting := await waiting_note(bus, run_id)):
                raise
            if as_json:
                print(json.dumps({"run_id": run_id, "status": "queued", "waiting": waiting}))
            else:
                console.print(f"{run_id} [yellow]queued[/]: {waiting}")
            return
        d = answer.result
        if not as_json:
            # The manifest counts the attempts workers ran (each item of a fan-out
            # once per try), which is what the phases table shows, as manifest does.
            m = await _ask_on(bus, "manifest", {"run_id": run_id}, quiet=True)
            attempts = {p["name"]: (p["attempts"], p["retries"]) for p in m.result["phases"]}
            failing = [p["name"] for p in d["phases"] if p["status"] in ("failed", "timed_out")]
            tracebacks = await _last_failures(bus, run_id, failing) if failing else {}
    run = d["run"]
    if as_json:
        print(json.dumps({"as_of": answer.as_of, "trace_id": trace_id_hex(run_id), **d}))
    else:
        _print_run(d, attempts, tracebacks)
    if run["status"] in ("failed", "cancelled") or run["tampered"]:
        sys.exit(1)


async def _last_failures(bus: Bus, run_id: str, phases: list[str]) -> dict[str, PhaseFailed]:
    """The last failed attempt of each of ``phases`` that recorded a detail (traceback)."""
    found: dict[str, PhaseFailed] = {}
    for rec in await bus.log.read_run(run_id):
        if not isinstance(rec, StoredSignal):
            continue
        s = rec.signal
        if s.phase in phases and isinstance(s.body, PhaseFailed) and s.body.error.detail:
            found[s.phase] = s.body
    return found


_PHASE_COLUMNS = (
    Column("phase"),
    Column("status"),
    Column("items", keep=60, justify="right"),
    Column("attempts", keep=70, justify="right"),
    Column("ran", keep=50, justify="right"),
    Column("wall", keep=40, justify="right"),
    Column("output", keep=20),
    Column("note", wrap=16),
)

_CHECK_COLUMNS = (
    Column("seq", keep=20, justify="right"),
    Column("phase", keep=60),
    Column("check"),
    Column("outcome"),
    Column("detail", wrap=24),
)


def _print_run(
    d: dict[str, Any],
    attempts: dict[str, tuple[int, int]],
    failures: dict[str, PhaseFailed],
) -> None:
    run, links = d["run"], d["links"]
    rid = run["run_id"]
    console.print(Text.assemble((rid, "bold"), " ", _run_status(run)))
    if run["tampered"]:
        _print_tampered(run)
    console.print(
        f"  pipeline [cyan]{run['pipeline']}[/] {run['version']}, seed {run['seed']}, "
        f"{run['signals']} signals"
    )
    console.print(
        f"  started {_when(run['started_at'] or run['requested_at'])}, "
        f"duration {duration_text(run['duration'])}"
    )
    if run["error_kind"]:
        console.print(
            Text(
                f"  {run['error_kind']} in {run['failed_phase'] or 'the run'}: "
                f"{first_line(run['error_message'] or '')}",
                "red",
            )
        )
    console.print(f"  fingerprint {run['fingerprint'] or '-'}")
    console.print(f"  code        {run['code_fingerprint'] or '-'}")
    console.print(f"  trace       {trace_id_hex(rid)} (OpenTelemetry trace id)")
    link_text = []
    if links["resumed_from"]:
        link_text.append(f"resumed from {links['resumed_from']}")
    if links["resumed_by"]:
        link_text.append(f"resumed by {', '.join(links['resumed_by'])}")
    if links["batch_id"]:
        link_text.append(f"batch {links['batch_id']} ({links['batch_runs']} runs)")
    if link_text:
        console.print("  " + "; ".join(link_text))
    _print_phases(d["phases"], attempts)
    _print_errors(rid, d["phases"], failures)
    _print_checks(d["checks"])
    prog = command_name()
    console.print(f"[dim]every check: {prog} show {rid} --json[/]")
    console.print(f"[dim]the manifest: {prog} manifest {rid}[/]")


def _print_tampered(run: dict[str, Any]) -> None:
    """Where the first flagged signal is, what is wrong with it, and how to see the rest."""
    room = max(console.width - 4, 40)
    said = (
        f"tampered: stream seq {run['tampered_stream_seq']} "
        f"({run['tampered_problem']}): {run['tampered_message']}"
    )
    for n, part in enumerate(textwrap.wrap(said, room)):
        console.print(Text(("  " if n == 0 else "    ") + part, "bold red"))
    prog = command_name()
    console.print(
        Text("    left out of what is shown here, with every other signal verify flags", "red")
    )
    console.print(Text(f"    check the whole run: {prog} replay verify {run['run_id']}", "red"))


def _attempts(ran: int, retried: int) -> str:
    if not ran:
        return "-"
    return f"{ran} ({retried} retried)" if retried else str(ran)


def _print_phases(phases: list[dict[str, Any]], attempts: dict[str, tuple[int, int]]) -> None:
    rows: list[list[Cell]] = []
    for p in phases:
        note = p["error_kind"] or ""
        if p["skip_reason"]:
            note = p["skip_reason"]
        if p.get("quarantined"):
            note += " (output quarantined)"
        rows.append(
            [
                p["name"],
                status_text(p["status"]),
                str(p["items"]) if p["items"] else "",
                _attempts(*attempts.get(p["name"], (0, 0))),
                duration_text(p["duration"]) if p["status"] == "completed" else "-",
                duration_text(p["wall"]),
                _short(p["output_digest"]),
                Text(note, "red" if p["error_kind"] else "dim"),
            ]
        )
    table, dropped = fit_table(_PHASE_COLUMNS, rows, width=console.width, title="phases")
    console.print(table)
    if dropped:
        console.print(dropped_note(dropped, console.width))


def _print_errors(
    run_id: str, phases: list[dict[str, Any]], failures: dict[str, PhaseFailed]
) -> None:
    """Each failed phase's error in full, the last frames of its traceback when recorded."""
    failed = [p for p in phases if p["error_kind"]]
    room = max(console.width - 2, 40)
    for p in failed:
        console.print(Text.assemble((p["name"], "bold red"), f" {p['status']}: {p['error_kind']}"))
        for line in (p["error_message"] or "").splitlines():
            for part in textwrap.wrap(line, room) or [""]:
                console.print(Text(f"  {part}"))
        if p.get("quarantined"):
            fetch = f"{command_name()} artifact {p['quarantined']}"
            console.print(f"  its output, quarantined: {fetch}")
        failure = failures.get(p["name"])
        if failure is not None:
            item = "" if failure.item is None else f" (item {failure.item})"
            console.print(f"  [dim]traceback of its last failed attempt{item}:[/]")
            for line in traceback_tail(failure.error.detail):
                console.print(Text(f"    {line}", "dim"))
    if any(p["name"] in failures for p in failed):
        console.print(f"[dim]whole traceback: {command_name()} signals {run_id} --json[/]")


def _print_checks(checks: list[dict[str, Any]]) -> None:
    failed = [c for c in checks if not c["passed"]]
    console.print(
        f"checks: {len(checks)} ({sum(c['type'] == 'contract' for c in checks)} contract, "
        f"{sum(c['type'] == 'invariant' for c in checks)} invariant), "
        + (f"[red]{len(failed)} failed[/]" if failed else "[green]all passed[/]")
    )
    shown = failed + [c for c in checks if c["type"] == "invariant" and c["passed"]]
    if not shown:
        return
    rows: list[list[Cell]] = []
    for c in sorted(shown, key=lambda c: c["seq"])[:40]:
        where = c["phase"] + (f"[{c['item']}]" if c["item"] is not None else "")
        name = f"{c['boundary']}:{c['name']}" if c["type"] == "contract" else c["name"]
        rows.append(
            [
                str(c["seq"]),
                where,
                name,
                Text("passed", "green") if c["passed"] else Text("failed", "red"),
                _detail(c),
            ]
        )
    table, _ = fit_table(_CHECK_COLUMNS, rows, width=console.width)
    console.print(table)


def _detail(c: dict[str, Any]) -> str:
    """A check's detail as a reader says it: violations by path, or observed against
    expected (or what the invariant states when it records neither)."""
    detail = c["detail"]
    if c["type"] == "contract":
        return "; ".join(f"{v['path']}: {v['message']}" for v in detail.get("violations", []))
    said = detail.get("description") or ""
    values = ", ".join(
        f"{name} {scalar_text(detail[name])}"
        for name in ("observed", "expected")
        if detail.get(name) is not None
    )
    return f"{said}: {values}" if said and values else said or values


@cli.command()
@click.argument("run_id")
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it to FILE."
)
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: it is JSON.")
@run_async
async def manifest(run_id: str, out: Path | None, as_json: bool) -> None:
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
@tag_option("Only runs with this tag (repeat: all of them), e.g. --tag team=data.")
@_JSON
@run_async
async def stats(pipeline: str, tags: dict[str, str], as_json: bool) -> None:
    """Per-phase duration percentiles, success and retry rates, check failures."""
    params: dict[str, Any] = {"pipeline": pipeline} if pipeline else {}
    if tags:
        params["tags"] = tags
    answer = await _ask("stats", params)
    d = answer.result
    if as_json:
        print(json.dumps({"as_of": answer.as_of, **d}))
        return
    if not d["pipelines"]:
        tagged = " with " + " ".join(f"{k}={v}" for k, v in tags.items()) if tags else ""
        console.print(f"no runs of {pipeline}{tagged}." if pipeline else f"no runs{tagged}.")
        return
    for p in d["pipelines"]:
        console.print(
            f"[bold]{p['pipeline']}[/]: {p['runs']} runs, {p['completed']} completed, "
            f"{p['failed']} failed, {p['cancelled']} cancelled, {p['active']} active"
            + (
                f", [bold red]{p['tampered']} TAMPERED[/] (left out of every figure "
                f"below: {command_name()} runs --tampered)"
                if p["tampered"]
                else ""
            )
        )
        p50, p95, p99 = (duration_text(p[f"duration_p{n}"]) for n in (50, 95, 99))
        console.print(f"  run duration p50 {p50}, p95 {p95}, p99 {p99}")
        rows: list[list[Cell]] = [
            [
                ph["phase"],
                str(ph["runs"]),
                _pct(ph["success_rate"]),
                _pct(ph["retry_rate"]),
                duration_text(ph["duration_p50"]),
                duration_text(ph["duration_p95"]),
                duration_text(ph["duration_p99"]),
                f"{ph['contract_failures']}/{ph['contract_checks']}",
                f"{ph['invariant_failures']}/{ph['invariant_checks']}",
            ]
            for ph in d["phases"]
            if ph["pipeline"] == p["pipeline"]
        ]
        table, dropped = fit_table(_STATS_COLUMNS, rows, width=console.width)
        console.print(table)
        if dropped:
            console.print(dropped_note(dropped, console.width))


_STATS_COLUMNS = (
    Column("phase"),
    Column("runs", keep=70, justify="right"),
    Column("success", keep=90, justify="right"),
    Column("retry rate", keep=80, justify="right"),
    Column("p50", keep=60, justify="right"),
    Column("p95", keep=50, justify="right"),
    Column("p99", keep=40, justify="right"),
    Column("contract fails", keep=30, justify="right"),
    Column("invariant fails", keep=20, justify="right"),
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


@cli.group()
def projections() -> None:
    """The DuckDB projection: rebuild it from the log, see where it stands."""


@projections.command()
@_JSON
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Processes folding the log again, each a share of the runs, while one writes "
    "(default: the CPU count). The tables are the same for any --jobs.",
)
@run_async
async def rebuild(as_json: bool, jobs: int | None) -> None:
    """Drop the tables, fold the whole log again, compare state digests before and after.

    Exit code 0 when the digests are equal, 1 when they differ.
    """
    answer = await _ask("rebuild", {"jobs": jobs or os.cpu_count() or 1}, timeout=600.0)
    r = answer.result
    if as_json:
        print(json.dumps(r))
    else:
        console.print(
            f"folded {r['stream_seq']} stream messages in {r['seconds']:.2f} s "
            f"({r.get('jobs', 1)} job{'s' if r.get('jobs', 1) > 1 else ''})"
        )
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
        try:
            data = await bus.artifacts.get(digest)
        except ArtifactNotFound as exc:
            raise ArtifactNotFound(
                f"{exc}. If you copied it from a manifest's `outputs`, a phase's "
                "`output_digest` or the output column of `sisas show`, that is the "
                "output's semantic digest, not its bytes': the bytes are under that "
                "phase's `artifact.digest` in `sisas manifest RUN`"
            ) from None
    if out is None:
        sys.stdout.buffer.write(data)
        return
    _write(out, data)
    err_console.print(f"{len(data)} bytes written to {out}")
