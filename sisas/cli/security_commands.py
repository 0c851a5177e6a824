"""``sisas security init|permissions``: nkey users with subject permissions per role."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sisas.bus.connection import check_url
from sisas.cli.app import cli, console, fail
from sisas.errors import SisasError
from sisas.security.permissions import NEVER, ROLES, UPSTREAM_INBOX, permissions_markdown
from sisas.security.profile import init_profile

__all__ = ["security"]


@cli.group()
def security() -> None:
    """Secure a NATS server for sisas: one nkey user per role, signing on (docs/security.md)."""


@security.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the keys, auth.conf and env files (created, mode 0700).",
)
@click.option(
    "--upstream",
    "upstream",
    multiple=True,
    metavar="SUBJECT",
    help="A subject (pattern) the upstream user may publish, e.g. upstream.catalogues.>; "
    "repeatable. Without it no upstream user is made.",
)
@click.option("--url", default=None, help="Write SISAS_NATS_URL=URL into the env files.")
@click.option("--force", is_flag=True, help="Replace existing user keys (the signing key is kept).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object listing the files.")
def init(out: Path, upstream: tuple[str, ...], url: str | None, force: bool, as_json: bool) -> None:
    """Write an nkey user per role, the server's auth.conf, an env file per role and the
    orchestrator's signing key into OUT.

    \b
    roles: orchestrator (the services, `sisas up`), operator (the CLI), worker,
           auditor (also dashboards; read only), upstream (--upstream: its subjects only)
    Each <role>.nk is a secret: give it only to that role's machines.
    """
    if url is not None:
        check_url(url, "--url")
    try:
        profile = init_profile(out, upstream=upstream, force=force, url=url)
    except SisasError as exc:
        fail(str(exc), exc.exit_code)
    if as_json:
        data = {
            "folder": str(profile.folder),
            "users": profile.users,
            "signing_public_key": profile.signing_public_key,
            "signing_kept": profile.signing_kept,
            "upstream": profile.upstream,
            "files": [{"kind": k, "path": str(p)} for k, p in profile.files],
        }
        print(json.dumps(data))
        return
    folder = profile.folder
    console.print(f"wrote the sisas security profile in {folder}:")
    for kind, path in profile.files:
        console.print(f"  {kind:<8} {path.name}")
    if profile.signing_kept:
        console.print(f"  kept     signing.nk (public key {profile.signing_public_key})")
    console.print(
        "\n[bold]server[/]: copy auth.conf next to the nats-server config file of the server "
        "(every node of a cluster) and add at its top level, beside `jetstream {...}`:\n"
        "  include auth.conf\n"
        "(nats-server reads include paths relative to the config file), then restart it or "
        "reload it: nats-server --signal reload=PID"
    )
    console.print(
        "\n[bold]clients[/]: each machine sources its role's env file, e.g.\n"
        f"  . {folder / 'orchestrator.env'} && sisas up          "
        "(orchestrator, projector, triggers; signs every signal)\n"
        f"  . {folder / 'worker.env'} && sisas worker --pipelines …\n"
        f"  . {folder / 'operator.env'} && sisas run PIPELINE …\n"
        f"  . {folder / 'auditor.env'} && sisas replay verify --all   "
        "(signatures required)"
    )
    if profile.upstream:
        console.print(
            f"  upstream: connect with upstream.nk, publish on {', '.join(profile.upstream)}; "
            f"inbox prefix {UPSTREAM_INBOX} for JetStream acks"
        )
    else:
        console.print(
            "  no upstream user: pass --upstream SUBJECT (repeatable) for a system whose "
            "messages trigger runs"
        )
    if url is None:
        console.print("set SISAS_NATS_URL to the server (or pass --url to write it in)")
    console.print("the permissions of each role: sisas security permissions; docs/security.md")


@security.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
def permissions(as_json: bool) -> None:
    """Print what each role may publish and subscribe to (Markdown, or --json:
    {"refused_to_every_role", "roles": [{"name", "summary", "publish", "subscribe",
    "refused_publish", "refused_subscribe", "responses", "grants"}]})."""
    if not as_json:
        print(permissions_markdown(), end="")
        return
    roles = [
        {
            "name": r.name,
            "summary": r.summary,
            "publish": r.publish,
            "subscribe": r.subscribe,
            "refused_publish": r.refused_publish,
            "refused_subscribe": list(r.deny_subscribe),
            "responses": r.responses or None,
            "grants": [
                {
                    "what": g.what,
                    "publish": list(g.all_publish),
                    "subscribe": list(g.subscribe),
                    "reads": list(g.reads),
                }
                for g in r.grants
            ],
        }
        for r in ROLES
    ]
    print(json.dumps({"refused_to_every_role": list(NEVER), "roles": roles}))
