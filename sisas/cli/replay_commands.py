"""``sisas replay verify|rerun|diff``: prove runs intact and deterministic from the log."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import msgspec

from sisas.bus.runtime import open_bus
from sisas.bus.verification import verify_log
from sisas.cli.app import cli, console, fail, load_settings, run_async
from sisas.cli.bars import progress_bar
from sisas.replay.verdicts import Finding, RunVerdict, VerifyReport
from sisas.signals import check_name

__all__ = ["replay", "trusted_keys"]


def trusted_keys(values: tuple[str, ...]) -> frozenset[str]:
    """Public nkeys from ``--trust`` (a key, or a file of keys one per line) and
    ``SISAS_TRUSTED_KEYS`` (keys separated by spaces)."""
    keys: set[str] = set(os.environ.get("SISAS_TRUSTED_KEYS", "").split())
    for value in values:
        path = Path(value)
        if path.is_file():
            keys.update(line.strip() for line in path.read_text().splitlines() if line.strip())
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
@run_async
async def verify(
    run_id: str | None, all_runs: bool, no_projection: bool, trust: tuple[str, ...], as_json: bool
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
                bus, run_id, trusted=keys, projection=not no_projection, on_progress=on_progress
            )
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        print_report(result, single=run_id is not None)
    sys.exit(0 if result.intact else 1)
