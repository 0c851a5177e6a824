"""``sisas keys generate|public``: the ed25519 key the orchestrator signs signals with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from sisas.bus.keys import generate_seed, signer_from_file
from sisas.cli.app import cli, console, fail
from sisas.errors import SisasError
from sisas.signals.signing import Signer

__all__ = ["keys"]


@cli.group()
def keys() -> None:
    """Signing keys: with SISAS_SIGNING_KEY set, the orchestrator signs every signal."""


@keys.command()
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Seed file."
)
@click.option("--json", "as_json", is_flag=True, help='Print {"public_key", "seed_file"}.')
def generate(out: Path, as_json: bool) -> None:
    """Create a new signing key in OUT (mode 0600) and print its public key.

    Give OUT to the orchestrator (SISAS_SIGNING_KEY=OUT) and the public key to auditors
    (sisas replay verify --trust KEY).
    """
    if out.exists():
        fail(f"{out} exists: choose another path (a key is never overwritten)")
    seed = generate_seed()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    public = Signer(seed).public_key
    if as_json:
        print(json.dumps({"public_key": public, "seed_file": str(out)}))
        return
    console.print(f"wrote {out}; public key:\n{public}")
    console.print(f"sign:   export SISAS_SIGNING_KEY={out}")
    console.print(f"verify: sisas replay verify --all --trust {public}")


@keys.command()
@click.argument("seed_file", type=click.Path(dir_okay=False, path_type=Path))
def public(seed_file: Path) -> None:
    """Print the public key of SEED_FILE."""
    try:
        print(signer_from_file(seed_file).public_key)
    except SisasError as exc:
        fail(str(exc), exc.exit_code)
