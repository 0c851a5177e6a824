"""``sisas replay verify|rerun|diff``: prove runs intact and deterministic from the log."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import msgspec

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, fail, load_settings, run_async
from sisas.cli.bars import progress_bar
from sisas.cli.run_commands import PIPELINES_OPTION
from sisas.client.queries import ask
from sisas.client.verification import bus_fetch, read_signals, rerun_signals, verify_log
from sisas.loader import load_pipelines
from sisas.projections.queries import parse_since
from sisas.replay.rerun import SIDE_EFFECTS_HELD
from sisas.replay.verdicts import (
    ArtifactProblem,
    Finding,
    PhaseRerun,
    RerunVerdict,
    RunVerdict,
    VerifyReport,
)
from sisas.signals import check_name

__all__ = ["INCLUDE_SIDE_EFFECTS", "print_evidence", "replay", "rerun_ok", "trusted_keys"]


def trusted_keys(values: tuple[str, ...]) -> frozenset[str]:
    """Public nkeys from ``--trust`` (a key, or a file of keys one per line) and
    ``SISAS_TRUSTED_KEYS`` (keys separated by spaces)."""
    keys: set[str] = set(load_settings().trusted_keys)  # checked there
    for value in values:
        path = Path(value)
        if path.is_file():
            try:
                text = path.read_text()
            except OSError as exc:
                fail(f"cannot read --trust {value} ({exc.strerror}): check the file")
            except ValueError:
                fail(f"--trust {value} is not a text file: list public keys in it, one a line")
            keys.update(line.strip() for line in text.splitlines() if line.strip())
        elif value.startswith(("U", "A", "N", "O", "C")) and len(value) == 56:
            keys.add(value)
        else:
            fail(f"--trust {value!r} is neither a public nkey (56 characters) nor a file of them")
    return frozenset(keys)


TRUST = click.option(
    "--trust",
    multiple=True,
    metavar="KEY|FILE",
    help="A public key whose signatures are trusted (or a file of them); repeatable. "
    "Also SISAS_TRUSTED_KEYS. With trusted keys every signal must be signed by one.",
)


INCLUDE_SIDE_EFFECTS = click.option(
    "--include-side-effects",
    is_flag=True,
    help="Also execute again the phases with side effects (side_effects=True: they post, "
    "send, write somewhere), which then happen again. By default their recorded outputs "
    "are reused.",
)


@cli.group()
def replay() -> None:
    """Prove runs intact (verify) and deterministic (rerun, diff) from the log alone."""


def finding_line(f: Finding) -> str:
    where = []
    if f.stream_seq:
        where.append(f"stream seq {f.stream_seq}")
    if f.run_seq:
        where.append(f"run seq {f.run_seq}")
    if f.kind:
        where.append(f.kind)
    at = f" ({', '.join(where)})" if where else ""
    return f"[red]{f.problem}[/]{at}: {f.message}"


def print_verdict(v: RunVerdict, *, limit: int = 10) -> None:
    sig = {"all": "signed", "some": "partly signed", "none": "unsigned"}[v.signed]
    signers = f" by {', '.join(k[:12] + '…' for k in v.signers)}" if v.signers else ""
    head = f"head seq {v.head_seq} {v.head_hash[:12]}" if v.head_hash else "empty"
    verdict = "[bold green]intact[/]" if v.intact else "[bold red]NOT intact[/]"
    console.print(
        f"run [cyan]{v.run_id}[/] ({v.pipeline}) {verdict}: {v.signals} signals, {head}, "
        f"{v.status}, {sig}{signers}, projection {v.projection}"
    )
    if v.fingerprint:
        console.print(f"  fingerprint {v.fingerprint}")
    for f in v.findings[:limit]:
        console.print(f"  {finding_line(f)}")
    if len(v.findings) > limit:
        console.print(f"  … and {len(v.findings) - limit} more (--json lists all)")
    for d in v.projection_diff[:limit]:
        console.print(f"  projection {d.path}: {d.recorded!r} (refold: {d.new!r})")
    for r in v.projection_rows[:limit]:
        key = ", ".join(map(str, r.key))
        if r.change != "differs":
            console.print(f"  projection {r.table} ({key}): {r.change}")
        for c in r.columns:
            console.print(
                f"  projection {r.table} ({key}) {c.path}: {c.recorded!r} (log: {c.new!r})"
            )


def print_report(r: VerifyReport, single: bool) -> None:
    if single:
        for v in r.verdicts:
            print_verdict(v)
    else:
        broken = [v for v in r.verdicts if not v.intact]
        for v in broken[:20]:
            print_verdict(v, limit=3)
        if len(broken) > 20:
            console.print(f"… and {len(broken) - 20} more runs not intact (--json lists all)")
    for f in r.log_findings[:10]:
        console.print(finding_line(f))
    style = "bold green" if r.intact else "bold red"
    console.print(
        f"[{style}]{'intact' if r.intact else 'NOT intact'}[/]: {r.intact_runs} of {r.runs} "
        f"runs intact, {r.signals} signals verified up to stream seq {r.stream_seq}"
        + (f", trusted keys {len(r.trusted_keys)}" if r.trusted_keys else "")
    )
    if r.first is not None:
        console.print(f"first problem: {finding_line(r.first)}")


@replay.command()
@click.argument("run_id", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Verify every run in the log.")
@click.option(
    "--no-projection", is_flag=True, help="Do not compare the refolded state with the projection."
)
@TRUST
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (docs/replay.md).")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Processes verifying --all, each the runs whose id hashes to its share; this one "
    "reads the log and hands the others their messages (default 1: on 2 busy cores a second "
    "process was slower; see docs/performance.md). The report is the same for any --jobs.",
)
@run_async
async def verify(
    run_id: str | None,
    all_runs: bool,
    no_projection: bool,
    trust: tuple[str, ...],
    as_json: bool,
    jobs: int | None,
) -> None:
    """Recompute every hash and link of RUN_ID (or --all), check gaps, forged and
    out-of-place signals and signatures, refold its state and compare it with the
    projection.

    Exit code 0 when intact, 1 when not (the first bad signal is named), 2 for usage errors.
    """
    if (run_id is None) == (not all_runs):
        fail("name one RUN_ID or pass --all")
    if run_id is not None:
        check_name(run_id, "run id")
    keys = trusted_keys(trust)
    async with open_bus(load_settings(), name="sisas-replay-verify") as bus:
        with progress_bar() as on_progress:
            result = await verify_log(
                bus,
                run_id,
                trusted=keys,
                projection=not no_projection,
                on_progress=on_progress,
                jobs=jobs or 1,
            )
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        print_report(result, single=run_id is not None)
    sys.exit(0 if result.intact else 1)


def _where(r: PhaseRerun) -> str:
    return r.phase + ("" if r.item is None else f"[{r.item}]")


def print_divergence(r: PhaseRerun, *, limit: int = 10) -> None:
    console.print(
        f"  first divergent phase [bold]{_where(r)}[/] (attempt {r.attempt}): recorded "
        f"{r.recorded_status} {r.recorded_digest[:19]}, rerun {r.new_status} {r.new_digest[:19]}"
    )
    if r.error:
        console.print(f"    rerun error: {r.error}")
    for c in r.checks:
        console.print(f"    check {c.check}: recorded {c.recorded}, rerun {c.new}")
    for d in r.diff[:limit]:
        console.print(f"    {d.path}: recorded {d.recorded!r}, rerun {d.new!r}")
    if len(r.diff) > limit:
        console.print(f"    … {len(r.diff) - limit} more fields differ (--json lists them)")


def print_environment_changes(v: RerunVerdict, *, limit: int = 12) -> None:
    """What differs between the recorded environment and the rerun's, one line each."""
    if v.recorded_environment is None:
        console.print("  environment: not recorded (the run predates environment records)")
        return
    if len(v.attempt_environments) > 1:
        console.print(
            f"  [yellow]note:[/] the run's attempts ran in {len(v.attempt_environments)} "
            "different environments (workers with other versions): compared with each"
        )
    if not v.environment_changes:
        console.print("  environment: the same as recorded")
        return
    n = len(v.environment_changes)
    console.print(f"  [yellow]environment differs[/] from the recorded one ({n}):")
    for line in v.environment_changes[:limit]:
        console.print(f"    {line}")
    if n > limit:
        console.print(f"    … {n - limit} more (--json lists them)")


def rerun_ok(v: RerunVerdict) -> bool:
    """Whether a rerun vouches for the run: deterministic, on complete evidence."""
    return v.deterministic and v.evidence_complete


def _headline(v: RerunVerdict) -> str:
    incomplete = "[bold red]evidence INCOMPLETE[/]"
    if v.deterministic:
        return "[bold green]deterministic[/]" + ("" if v.evidence_complete else f", {incomplete}")
    if v.first_divergence is None and not v.evidence_complete:
        return f"{incomplete}: [bold red]NOT shown deterministic[/]"
    return "[bold red]NOT deterministic[/]" + ("" if v.evidence_complete else f", {incomplete}")


def print_evidence(problems: list[ArtifactProblem], read: int, *, indent: str = "  ") -> None:
    """Whether every artifact read hashed to its digest; else each one that did not."""
    if not problems:
        console.print(f"{indent}evidence complete: {read} artifacts read, each matches its digest")
        return
    n = len(problems)
    console.print(
        f"{indent}[bold red]evidence INCOMPLETE[/]: {n} artifact{'s' if n != 1 else ''} "
        f"the log names {'are' if n != 1 else 'is'} missing or damaged:"
    )
    for p in problems:
        console.print(f"{indent}  {p.digest} {p.problem}: {'; '.join(p.used_as)}", markup=False)
        if p.detail:
            console.print(f"{indent}    {p.detail}", markup=False)


def print_rerun(v: RerunVerdict) -> None:
    console.print(
        f"rerun of [cyan]{v.run_id}[/] ({v.pipeline}): {len(v.phases)} attempts on "
        f"{v.workers} worker{'s' if v.workers != 1 else ''}, {_headline(v)}"
    )
    console.print(f"  recorded fingerprint {v.recorded_fingerprint}")
    same = "equal" if v.fingerprint == v.recorded_fingerprint else "[red]differs[/]"
    console.print(f"  rerun    fingerprint {v.fingerprint} ({same})")
    if v.recorded_code and v.current_code and v.recorded_code != v.current_code:
        console.print("  [yellow]note:[/] the pipeline code changed since the run")
    print_environment_changes(v)
    print_evidence(v.artifact_problems, v.artifacts_read)
    if v.side_effects_rerun:
        console.print(
            "  [yellow]side effects executed again[/] (--include-side-effects): "
            + ", ".join(v.side_effects_rerun)
        )
    for name, why in v.not_rerun.items():
        console.print(f"  not rerun: {name}: {why}")
    if v.first_divergence is not None:
        print_divergence(v.first_divergence)
        others = [_where(r) for r in v.phases if not r.equal][1:]
        if others:
            console.print(f"  also differ: {', '.join(others[:20])}")
    console.print(f"  phases' own compute: {v.compute_seconds:.3f} s")


@replay.command()
@click.argument("run_id")
@PIPELINES_OPTION
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes to rerun phases in (N > 1: parallel; compare with 1 to certify "
    "that parallel equals serial).",
)
@INCLUDE_SIDE_EFFECTS
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@run_async
async def rerun(
    run_id: str,
    pipeline_specs: tuple[str, ...],
    workers: int,
    include_side_effects: bool,
    as_json: bool,
) -> None:
    """Execute RUN_ID's phases again from their recorded inputs and seeds, without
    touching the log, and compare every output digest and check result. Phases with
    side effects are not executed again (their recorded outputs are reused) unless
    --include-side-effects.

    Exit code 0 when every phase gave what it recorded and every artifact needed was
    read intact, 1 at the first divergence (named, with a field-level diff of the
    recorded and the new output) or when the evidence is incomplete (a missing or
    damaged artifact, named by digest and phase), 2 for usage errors.
    """
    check_name(run_id, "run id")
    pipelines = load_pipelines(pipeline_specs)
    async with open_bus(load_settings(), name="sisas-replay-rerun") as bus:
        signals = await read_signals(bus, run_id)
        with progress_bar() as on_progress:
            result = await rerun_signals(
                signals,
                pipelines,
                bus_fetch(bus),
                workers=workers,
                on_progress=on_progress,
                nats_server=bus.server_version,
                include_side_effects=include_side_effects,
            )
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        print_rerun(result)
    sys.exit(0 if rerun_ok(result) else 1)


@replay.command()
@click.option("--pipeline", "-p", required=True, help="The pipeline whose runs to rerun.")
@click.option(
    "--since", default="7d", show_default=True, help="Runs started since (2d, 2026-11-01)."
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@PIPELINES_OPTION
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@INCLUDE_SIDE_EFFECTS
@click.option("--json", "as_json", is_flag=True, help="Print the runs and changed phases as JSON.")
@run_async
async def diff(
    pipeline: str,
    since: str,
    limit: int,
    pipeline_specs: tuple[str, ...],
    workers: int,
    include_side_effects: bool,
    as_json: bool,
) -> None:
    """Rerun stored runs of a pipeline under the code installed now and list which
    phases' outputs would change: a data-level regression test for a code change.
    Phases with side effects are not executed again unless --include-side-effects.

    Exit code 0 when no output would change, 1 when some would or when a run's evidence
    is incomplete (a missing or damaged artifact: it could not be compared).
    """
    check_name(pipeline, "pipeline name")
    started = parse_since(since, datetime.now(UTC))
    pipelines = load_pipelines(pipeline_specs)
    if pipeline not in pipelines and pipelines:
        fail(
            f"no pipeline {pipeline!r} (loaded: {', '.join(sorted(pipelines))}): check "
            "--pipeline, or pass the code that defines it with --pipelines MODULE_OR_FILE"
        )
    if pipeline not in pipelines:
        fail(f"the code of {pipeline!r} is not loaded: pass --pipelines MODULE_OR_FILE")
    rows = []
    async with open_bus(load_settings(), name="sisas-replay-diff") as bus:
        listed = await ask(
            bus, "runs", {"pipeline": pipeline, "since": started.isoformat(), "limit": limit}
        )
        runs = [r for r in listed.result if r["status"] in ("completed", "failed")]
        with progress_bar() as on_progress:
            for i, run in enumerate(runs):
                on_progress("rerunning runs", i, len(runs))
                signals = await read_signals(bus, run["run_id"])
                rows.append(
                    await rerun_signals(
                        signals,
                        pipelines,
                        bus_fetch(bus),
                        workers=workers,
                        nats_server=bus.server_version,
                        include_side_effects=include_side_effects,
                    )
                )
    # A run kept from the comparison by a missing artifact is incomplete, not changed.
    changed = [
        v
        for v in rows
        if v.first_divergence is not None or (not v.deterministic and v.evidence_complete)
    ]
    incomplete = [v for v in rows if not v.evidence_complete]
    if as_json:
        out = {
            "pipeline": pipeline,
            "since": started.isoformat(),
            "runs": len(rows),
            "changed_runs": len(changed),
            "incomplete_runs": len(incomplete),
            "verdicts": [
                {
                    "run_id": v.run_id,
                    "changed": [_where(r) for r in v.phases if not r.equal],
                    "first_divergence": v.first_divergence,
                    "recorded_fingerprint": v.recorded_fingerprint,
                    "fingerprint": v.fingerprint,
                    "evidence_complete": v.evidence_complete,
                    "artifact_problems": v.artifact_problems,
                    "not_rerun": v.not_rerun,
                    "side_effects_rerun": v.side_effects_rerun,
                }
                for v in rows
            ],
        }
        sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    else:
        _print_diff(pipeline, started, rows, changed, incomplete)
    sys.exit(1 if changed or incomplete else 0)


def _print_diff(
    pipeline: str,
    started: datetime,
    rows: list[RerunVerdict],
    changed: list[RerunVerdict],
    incomplete: list[RerunVerdict],
) -> None:
    for v in changed:
        phases = sorted({r.phase for r in v.phases if not r.equal}) or ["its fingerprint"]
        console.print(f"[cyan]{v.run_id}[/]: {', '.join(phases)} would change")
        if v.first_divergence is not None:
            print_divergence(v.first_divergence, limit=3)
    for v in incomplete:
        console.print(f"[cyan]{v.run_id}[/]:")
        print_evidence(v.artifact_problems, v.artifacts_read)
    held: dict[str, int] = {}
    again: dict[str, int] = {}
    for v in rows:
        for name, why in v.not_rerun.items():
            if why == SIDE_EFFECTS_HELD:
                held[name] = held.get(name, 0) + 1
        for name in v.side_effects_rerun:
            again[name] = again.get(name, 0) + 1
    for name, n in held.items():
        console.print(f"not rerun: {name}: {SIDE_EFFECTS_HELD} ({n} of {len(rows)} runs)")
    for name, n in again.items():
        console.print(
            f"[yellow]side effects executed again[/] (--include-side-effects): {name} "
            f"({n} of {len(rows)} runs)"
        )
    if not rows:
        err_console.print(f"no finished runs of {pipeline} since {started:%Y-%m-%d %H:%M}")
    console.print(
        f"{len(changed)} of {len(rows)} runs of {pipeline} would change under this code"
        + (
            f"; {len(incomplete)} with incomplete evidence (missing or damaged artifacts)"
            if incomplete
            else ""
        )
    )
