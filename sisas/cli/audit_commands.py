"""``sisas audit RUN --out DIR`` and ``sisas audit verify DIR``: evidence for auditors."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import msgspec
from rich.markup import escape

from sisas import __version__
from sisas.audit.bundle import (
    BundleVerdict,
    Claims,
    bundle_fetch,
    read_records,
    verify_bundle,
)
from sisas.audit.bundle import write_bundle as write
from sisas.audit.html import render_report
from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, fail, load_settings, run_async
from sisas.cli.bars import progress_bar
from sisas.cli.replay_commands import (
    INCLUDE_SIDE_EFFECTS,
    TRUST,
    finding_line,
    print_evidence,
    print_rerun,
    rerun_ok,
    trusted_keys,
)
from sisas.cli.run_commands import PIPELINES_OPTION
from sisas.client.queries import ask
from sisas.client.verification import bus_fetch, rerun_signals, verify_log
from sisas.errors import SisasError
from sisas.handlers.state import fold
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline
from sisas.replay.evidence import artifact_uses, located
from sisas.replay.verdicts import ArtifactProblem, RerunVerdict, VerifyReport
from sisas.signals import check_name
from sisas.signals.records import CorruptMessage, StoredSignal

__all__ = ["audit"]


_IMPLICIT = "sisas.audit.implicit_export"


class _ExportByDefault(click.Group):
    """``sisas audit RUN …`` means ``sisas audit export RUN …``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["export", *args]
            ctx.meta[_IMPLICIT] = True
        return super().parse_args(ctx, args)


class _ExportContext(click.Context):
    """Usage lines and hints of ``export`` name the command as typed: ``sisas audit``
    when the user left ``export`` out."""

    @property
    def command_path(self) -> str:
        path = super().command_path
        if self.meta.get(_IMPLICIT) and path.endswith(" export"):
            return path.removesuffix(" export")
        return path


@cli.group(cls=_ExportByDefault)
def audit() -> None:
    """Export a run's audit bundle (sisas audit RUN --out DIR) or check one offline
    (sisas audit verify DIR)."""


@audit.command()
@click.argument("run_id")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="New folder."
)
@click.option("--rerun", "do_rerun", is_flag=True, help="Rerun the phases too (needs --pipelines).")
@PIPELINES_OPTION
@click.option(
    "--max-artifact-bytes",
    type=click.IntRange(0),
    default=16 * 1024 * 1024,
    show_default=True,
    help="Artifacts larger than this are listed but left out.",
)
@TRUST
@INCLUDE_SIDE_EFFECTS
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(
    run_id: str,
    out: Path,
    do_rerun: bool,
    pipeline_specs: tuple[str, ...],
    max_artifact_bytes: int,
    trust: tuple[str, ...],
    include_side_effects: bool,
    as_json: bool,
) -> None:
    """Write RUN_ID's audit bundle into OUT: signals, manifest, artifacts, verdicts and
    report.html. Exit code 0 when the run's log verifies, its evidence is complete (every
    artifact it read or wrote is in the store and matches its digest) and, with --rerun,
    the rerun is deterministic; 1 when not (the bundle is written all the same).

    --json prints one object: {"run_id", "folder", "ok", "intact", "evidence_complete",
    "deterministic", "signals", "artifacts_included", "artifacts", "artifact_problems",
    "files", "verify", "rerun"}."""
    check_name(run_id, "run id")
    if include_side_effects and not do_rerun:
        fail("--include-side-effects is for --rerun: add --rerun --pipelines CODE")
    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty: choose a new folder for the bundle")
    pipelines = load_pipelines(pipeline_specs) if do_rerun else {}
    found = _collect(
        run_id,
        trusted_keys(trust),
        pipelines,
        do_rerun,
        max_artifact_bytes,
        include_side_effects=include_side_effects,
    )
    verdict = found.report.verdicts[0]
    signals = [r.signal for r in found.records if isinstance(r, StoredSignal)]
    html = render_report(
        manifest=found.manifest,
        verdict=verdict,
        state=fold(signals),
        signals=signals,
        rerun=found.rerun,
        evidence=found.problems,
        artifacts=len(found.artifacts),
        generated_with=f"sisas {__version__}",
    )
    try:
        index = write(
            out,
            records=found.records,
            manifest=found.manifest,
            claims=Claims(verify=verdict, rerun=found.rerun),
            artifacts=found.artifacts,
            html=html,
            problems=found.problems,
        )
    except OSError as exc:
        fail(f"cannot write the bundle to {out} ({exc.strerror}): choose a writable folder")
    included = sum(1 for a in index.artifacts.values() if a.included)
    complete = not found.problems
    ok = verdict.intact and complete and (found.rerun is None or rerun_ok(found.rerun))
    if as_json:
        doc: dict[str, Any] = {
            "run_id": run_id,
            "folder": str(out),
            "ok": ok,
            "intact": verdict.intact,
            "evidence_complete": complete,
            "deterministic": None if found.rerun is None else found.rerun.deterministic,
            "signals": verdict.signals,
            "artifacts_included": included,
            "artifacts": len(index.artifacts),
            "artifact_problems": found.problems,
            "files": sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()),
            "verify": verdict,
            "rerun": found.rerun,
        }
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        sys.exit(0 if ok else 1)
    state = "[bold green]log intact[/]" if verdict.intact else "[bold red]log NOT intact[/]"
    evidence = "evidence complete" if complete else "[bold red]evidence INCOMPLETE[/]"
    console.print(
        f"wrote {out}/: {verdict.signals} signals ({state}), manifest, "
        f"{included} of {len(index.artifacts)} artifacts ({evidence}), verdict.json, report.html"
    )
    if not complete:
        print_evidence(found.problems, included)
    if found.rerun is not None:
        print_rerun(found.rerun)
    console.print(f"open {out / 'report.html'}; check it anywhere with: sisas audit verify {out}")
    sys.exit(0 if ok else 1)


export.context_class = _ExportContext


@dataclass(frozen=True)
class _Found:
    report: VerifyReport
    manifest: dict[str, Any]
    records: list[StoredSignal | CorruptMessage]
    rerun: RerunVerdict | None
    artifacts: dict[str, tuple[str, bytes | None, str]]
    problems: list[ArtifactProblem]
    """The artifacts the store could not give as the log records them."""


@run_async
async def _collect(
    run_id: str,
    keys: frozenset[str],
    pipelines: dict[str, Pipeline],
    do_rerun: bool,
    max_artifact_bytes: int,
    *,
    include_side_effects: bool = False,
) -> _Found:
    """Everything the bundle holds, read from the bus."""
    async with open_bus(load_settings(), name="sisas-audit") as bus:
        with progress_bar() as on_progress:
            report = await verify_log(bus, run_id, trusted=keys, on_progress=on_progress)
            manifest = (await ask(bus, "manifest", {"run_id": run_id})).result
            records = await bus.log.read_run(run_id)
            signals = [r.signal for r in records if isinstance(r, StoredSignal)]
            rerun: RerunVerdict | None = None
            if do_rerun:
                rerun = await rerun_signals(
                    signals,
                    pipelines,
                    bus_fetch(bus),
                    on_progress=on_progress,
                    nats_server=bus.server_version,
                    include_side_effects=include_side_effects,
                )
            artifacts: dict[str, tuple[str, bytes | None, str]] = {}
            problems: list[ArtifactProblem] = []
            fetch = bus_fetch(bus)
            uses = artifact_uses(signals)
            for digest, used_as in uses.items():
                role = used_as[0]
                data = await fetch(digest)
                if not isinstance(data, bytes):
                    problem = data or ArtifactProblem(digest=digest, problem="missing")
                    problems.append(located(digest, problem.problem, problem.detail, uses))
                    artifacts[digest] = (role, None, problem.detail)
                elif len(data) > max_artifact_bytes:
                    why = f"{len(data)} bytes, over --max-artifact-bytes"
                    artifacts[digest] = (role, None, why)
                else:
                    artifacts[digest] = (role, data, "")
    return _Found(
        report=report,
        manifest=manifest,
        records=records,
        rerun=rerun,
        artifacts=artifacts,
        problems=problems,
    )


def _print_bundle(v: BundleVerdict) -> None:
    log = "[bold green]log intact[/]" if v.log_intact else "[bold red]log NOT intact[/]"
    evidence = (
        "[bold green]evidence complete[/]"
        if v.evidence_complete
        else "[bold red]evidence INCOMPLETE[/]"
    )
    verdict = "[bold green]intact[/]" if v.intact else "[bold red]NOT intact[/]"
    console.print(f"bundle of run [cyan]{v.run_id}[/]: {verdict} ({log}, {evidence})")
    if v.verify is not None:
        console.print(
            f"  signals: {v.verify.signals}, chain head {v.verify.head_hash[:16]}, "
            f"{v.verify.status}, signed: {v.verify.signed}"
        )
        for f in v.verify.findings[:10]:
            console.print(f"  {finding_line(f)}")
    console.print(f"  artifacts checked against their digests: {v.artifacts_checked}")
    for line in v.artifacts_left_out:
        console.print(f"  left out at export: {line}", markup=False)
    if not v.evidence_complete:
        print_evidence(v.artifact_problems, v.artifacts_checked)
    for label, problems in (
        ("file", v.files),
        ("manifest", v.manifest),
        ("verdict", v.claims),
    ):
        for p in problems:
            console.print(f"  [red]{label}[/]: {escape(p)}")


@audit.command(name="verify")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@TRUST
@click.option(
    "--rerun", "do_rerun", is_flag=True, help="Also rerun the phases from the bundle's artifacts."
)
@PIPELINES_OPTION
@INCLUDE_SIDE_EFFECTS
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify_cmd(
    folder: Path,
    trust: tuple[str, ...],
    do_rerun: bool,
    pipeline_specs: tuple[str, ...],
    include_side_effects: bool,
    as_json: bool,
) -> None:
    """Check a bundle offline, with no server: every file against the index, the chain,
    placement and signatures, the manifest against the refold (the log is intact), every
    artifact the run used against its digest (the evidence is complete). Exit code 0
    when both hold (and, with --rerun, the rerun is deterministic), 1 when not, 2 not a
    bundle."""
    if not folder.is_dir():
        fail(f"{folder} is not a folder: pass the folder `sisas audit RUN --out` wrote")
    if include_side_effects and not do_rerun:
        fail("--include-side-effects is for --rerun: add --rerun --pipelines CODE")
    rerun = None
    try:
        result = verify_bundle(folder, trusted=trusted_keys(trust))
        if do_rerun:
            records = read_records(folder / "signals.jsonl")
            signals = [r.signal for r in records if isinstance(r, StoredSignal)]
            rerun = asyncio.run(
                rerun_signals(
                    signals,
                    load_pipelines(pipeline_specs),
                    bundle_fetch(folder),
                    include_side_effects=include_side_effects,
                )
            )
    except SisasError as exc:
        fail(str(exc), exc.exit_code)
    ok = result.intact and (rerun is None or rerun_ok(rerun))
    if as_json:
        doc: dict[str, Any] = {"ok": ok, "bundle": result, "rerun": rerun}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        _print_bundle(result)
        if rerun is not None:
            print_rerun(rerun)
    sys.exit(0 if ok else 1)
