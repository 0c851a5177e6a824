"""Secrets never enter the log: a phase declares them, the worker resolves them where it
runs, the log records names and keyed digests; --set of a secret-looking key is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client import Client
from sisas.errors import UsageError
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.signals import PhaseStarted
from sisas.signals.codec import encode_signal
from sisas.testing import run_pipeline
from tests.cli_process import server_env, sisas_async

CODE = str(Path(__file__).parent / "secret_pipelines.py")
VALUE = "hunter2-Secret-Value-42"


async def test_a_secret_reaches_the_phase_and_never_the_log_or_an_export(
    bus: Bus, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SISAS_SECRET_DB_PASSWORD", VALUE)  # where the worker runs
    monkeypatch.setenv("SISAS_SECRETS_KEY", "the-fleet-key")
    pipes = load_pipelines([CODE], entry_points=False)
    client = Client(bus)
    async with running_services(bus, pipes, projector=True):
        handle = await client.start("secret_posting", {"x": "y"})
        result = await handle.result(check=False)
    assert result.status == "failed" and result.failed_phase == "careless"
    assert result.error is not None and "without declaring it" in result.error.message
    assert await handle.output("connect") == len(VALUE)
    assert await handle.output("isolated") == 2 * len(VALUE)  # resolved for the child too
    bodies = [s.body async for s in handle.signals(follow=False)]
    recorded = [b.secrets for b in bodies if isinstance(b, PhaseStarted)]
    assert {"db_password"} in [set(r) for r in recorded]
    digests = {r["db_password"] for r in recorded if r}
    assert len(digests) == 1 and next(iter(digests)).startswith("hmac-sha256:")

    bundle = tmp_path / "bundle"
    outputs = [
        await sisas_async("signals", handle.run_id, "--json", env=server_env(settings)),
        await sisas_async("manifest", handle.run_id, env=server_env(settings)),
        await sisas_async("show", handle.run_id, "--json", env=server_env(settings)),
        await sisas_async("audit", handle.run_id, "--out", str(bundle), env=server_env(settings)),
        await sisas_async("tail", "--all", "--json", "--no-follow", env=server_env(settings)),
    ]
    everything = "".join(o.stdout + o.stderr for o in outputs).encode()
    everything += b"".join(p.read_bytes() for p in bundle.rglob("*") if p.is_file())
    records = await bus.log.read_run(handle.run_id)
    everything += b"".join(json.dumps(str(r)).encode() for r in records)
    assert VALUE.encode() not in everything
    assert b"db_password" in everything  # what was used is on record, not its value

    # a rerun resolves the secrets where it runs, as the worker did
    secret_env = {"SISAS_SECRET_DB_PASSWORD": VALUE}
    rerun = await sisas_async(
        "replay", "rerun", handle.run_id, "--pipelines", CODE,
        env=server_env(settings, **secret_env),
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "deterministic" in rerun.stdout and VALUE not in rerun.stdout + rerun.stderr
    without = await sisas_async(
        "replay", "rerun", handle.run_id, "--pipelines", CODE, env=server_env(settings)
    )
    assert without.returncode == 2 and "SISAS_SECRET_DB_PASSWORD" in without.stderr


async def test_a_missing_secret_fails_the_attempt_naming_where_to_put_it(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SISAS_SECRET_DB_PASSWORD", raising=False)
    monkeypatch.delenv("SISAS_SECRETS_DIR", raising=False)
    pipes = load_pipelines([CODE], entry_points=False)
    async with running_services(bus, pipes):
        result = await (await Client(bus).start("secret_posting", {})).result(check=False)
    assert result.failed_phase == "connect" and result.error is not None
    assert "SISAS_SECRET_DB_PASSWORD" in result.error.message


def test_a_secrets_dir_serves_mounted_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sisas.services.secrets import resolve_secrets, secret_digests

    (tmp_path / "db_password").write_text(VALUE + "\n")
    env = {"SISAS_SECRETS_DIR": str(tmp_path)}
    assert resolve_secrets(["db_password"], env) == {"db_password": VALUE}
    assert secret_digests({"db_password": VALUE}, env) == {"db_password": ""}  # no key
    keyed = secret_digests({"db_password": VALUE}, {"SISAS_SECRETS_KEY": "k"})
    assert keyed != secret_digests({"db_password": VALUE + "!"}, {"SISAS_SECRETS_KEY": "k"})


def test_set_of_a_secret_looking_key_is_refused_before_anything_is_sent(
    settings: Settings,
) -> None:
    pipe = load_pipelines([CODE], entry_points=False)["secret_posting"]
    with pytest.raises(UsageError, match=r"db.password=…: db.password looks like a secret"):
        run_pipeline(pipe, {}, config={"db.password": VALUE})
    for key in ("api_key", "auth.token", "s3.access-key"):
        with pytest.raises(UsageError, match="looks like a secret"):
            run_pipeline(pipe, {}, config={key: "x"})


async def test_the_cli_refuses_a_secret_in_set_and_does_not_echo_it(
    settings: Settings, tmp_path: Path
) -> None:
    done = await sisas_async(
        "run",
        f"{CODE}:posting",
        "--set",
        f"db.password={VALUE}",
        "--wait",
        env=server_env(settings),
    )
    assert done.returncode == 2
    assert "looks like a secret" in done.stderr and VALUE not in done.stderr


def test_secrets_in_process_with_sisas_testing() -> None:
    pipe = load_pipelines([CODE], entry_points=False)["secret_posting"]
    result = run_pipeline(pipe, {}, secrets={"db_password": "Xyzzy-Secret"})
    assert result.output("connect") == 12 and result.output("isolated") == 24
    assert b"Xyzzy-Secret" not in b"".join(encode_signal(s) for s in result.signals)
