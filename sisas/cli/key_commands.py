"""``sisas keys generate|public``: the ed25519 key the orchestrator signs signals with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from sisas.cli.app import cli, console, fail
from sisas.errors import SisasError
from sisas.security.keys import generate_seed
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
@click.option("--json", "as_json", is_flag=True, help='Print {"public_key", "seed_file"}.')
def public(seed_file: Path, as_json: bool) -> None:
    """Print the public key of SEED_FILE."""
    try:
        seed = seed_file.read_bytes()
    except FileNotFoundError:
        fail(
            f"no such file {seed_file}: pass the seed file `sisas keys generate --out FILE` "
            "wrote (SEED_FILE)"
        )
    except OSError as exc:
        fail(f"cannot read {seed_file} ({exc.strerror}): check SEED_FILE and its permissions")
    try:
        key = Signer(seed).public_key
    except SisasError:
        fail(
            f"{seed_file} is not an nkey seed: pass a seed file written by "
            "`sisas keys generate --out FILE` (SEED_FILE)"
        )
    if as_json:
        print(json.dumps({"public_key": key, "seed_file": str(seed_file)}))
    else:
        print(key)
