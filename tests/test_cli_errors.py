"""Errors a user meets at the command line: one line on stderr naming what was wrong and
the fix, exit code 2 for usage errors, never a traceback; real processes, a real server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sisas.bus.runtime import Bus
from sisas.dashboard.app import create_app
from sisas.dashboard.hub import Hub
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from tests.cli_process import SISAS, base_env, sisas, sisas_async
from tests.conftest import NatsServer
from tests.runs import EXAMPLE, POINTS, ROOT, start, wait_end

RULES = str(ROOT / "examples" / "triggers" / "sisas.toml")
CATALOGUE = str(ROOT / "examples" / "triggers" / "catalogue.json")


def one_line_error(out: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single ``error: …`` line of a command that failed with ``code``."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def offline(tmp_path: Path) -> dict[str, str]:
    """An environment with no server configured: for commands that need none."""
    return base_env(SISAS_HOME=str(tmp_path / "home"))


@pytest.fixture
def env(nats_server: NatsServer, offline: dict[str, str]) -> dict[str, str]:
    return {**offline, "SISAS_NATS_URL": nats_server.url, "SISAS_REPLICAS": "1"}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket holds for the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


# 1. sync commands: a SisasError is one line and its exit code, never a traceback


def test_triggers_test_with_a_missing_or_bad_rules_file_names_its_argument(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    line = one_line_error(sisas("triggers", "test", "nosuch.toml", CATALOGUE, env=offline))
    assert "no rules file nosuch.toml" in line
    assert "RULES_FILE" in line and "--triggers" not in line
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [")
    assert "not valid TOML" in one_line_error(
        sisas("triggers", "test", str(bad), CATALOGUE, env=offline)
    )


def test_triggers_test_with_a_missing_or_bad_message_says_which(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    missing = str(tmp_path / "nosuchmsg.json")
    line = one_line_error(sisas("triggers", "test", RULES, missing, env=offline))
    assert f"no such file {missing}" in line and "not JSON" not in line
    assert "not JSON" in one_line_error(sisas("triggers", "test", RULES, '{"a": ', env=offline))
    not_json = tmp_path / "message.json"
    not_json.write_text("hello")
    line = one_line_error(sisas("triggers", "test", RULES, str(not_json), env=offline))
    assert f"{not_json} is not JSON" in line
    ok = sisas("triggers", "test", RULES, CATALOGUE, "--json", env=offline)
    assert ok.returncode == 0, ok.stderr
    assert any(r["matched"] for r in json.loads(ok.stdout)["results"])


def test_audit_export_input_errors_are_usage_errors(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    out = tmp_path / "bundle"
    assert "invalid run id" in one_line_error(
        sisas("audit", "bad.id", "--out", str(out), env=offline)
    )
    line = one_line_error(
        sisas("audit", "r1", "--out", str(out), "--rerun", "--pipelines", "nosuch.py", env=offline)
    )
    assert "nosuch.py does not exist" in line


# 5. hints name the option of the command the user typed


def test_keys_public_blames_its_seed_file_not_a_variable(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    line = one_line_error(sisas("keys", "public", "nosuch.nk", env=offline))
    assert "no such file nosuch.nk" in line and "SISAS_SIGNING_KEY" not in line
    junk = tmp_path / "junk.nk"
    junk.write_text("not a seed\n")
    line = one_line_error(sisas("keys", "public", str(junk), env=offline))
    assert f"{junk} is not an nkey seed" in line and "SISAS_SIGNING_KEY" not in line


def test_dashboard_on_a_busy_port_names_its_own_port_option(
    env: dict[str, str], busy_port: int
) -> None:
    line = one_line_error(sisas("dashboard", "--port", str(busy_port), env=env))
    assert f"127.0.0.1:{busy_port}" in line
    assert "--port N" in line and "--dashboard-port" not in line


def test_up_with_its_dashboard_on_a_busy_port_names_up_s_option_and_stops_clean(
    env: dict[str, str], busy_port: int
) -> None:
    """`sisas up` serves the dashboard from a process of its own: that process failing
    to listen is still one line naming up's option, exit 2, and up leaves nothing
    running."""
    out = sisas("up", "--dashboard-port", str(busy_port), env=env, timeout=120)
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    assert f"127.0.0.1:{busy_port}" in errors[0]
    assert "--dashboard-port N" in errors[0] and "--no-dashboard" in errors[0]
    assert "--port N (0" not in errors[0]  # the dashboard command's own option
    assert "Traceback" not in out.stderr


# 2. the dashboard's JSON API: a bad query parameter is a 400 naming it, never a 500


async def test_dashboard_api_rejects_bad_query_parameters_with_400(bus: Bus) -> None:
    app = create_app(bus, Hub())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        for query, named in [
            ("limit=abc", "limit"),
            ("limit=0", "limit"),
            ("limit=-3", "limit"),
            ("limit=1001", "limit"),
            ("limit=1.5", "limit"),
            ("status=bogus", "status"),
            ("pipeline=no.dots", "pipeline"),
        ]:
            answer = await client.get(f"/api/runs?{query}")
            assert answer.status_code == 400, (query, answer.text)
            assert named in answer.json()["error"], query
        ok = await client.get("/api/runs?limit=5&status=completed&pipeline=p1")
        assert ok.status_code == 200, ok.text
        assert ok.json()["runs"] == []
        assert (await client.get("/api/runs/no.dots")).status_code == 400
        for path, named in [
            ("/api/runs/r1/phases/work/items?limit=0", "limit"),
            ("/api/runs/r1/phases/work/items?limit=501", "limit"),
            ("/api/runs/r1/phases/work/items?offset=-1", "offset"),
            ("/api/runs/r1/phases/work/items?status=bogus", "status"),
            ("/api/runs/r1/phases/work/items?order=bogus", "order"),
            ("/api/runs/r1/checks?limit=x", "limit"),
            ("/api/runs/r1/checks?q=" + "x" * 201, "q"),
            ("/api/runs/r1/log?phase=work&attempt=-1", "attempt"),
            ("/api/runs/r1/log?phase=work&item=x", "item"),
            ("/api/runs/r1/log?phase=no.dots", "phase"),
        ]:
            answer = await client.get(path)
            assert answer.status_code == 400, (path, answer.text)
            assert named in answer.json()["error"], path
        assert (await client.get("/api/runs/r1/checks")).status_code == 404  # no run r1
        report = await client.get("/runs/no.dots/report")
        assert report.status_code == 400 and "invalid run id" in report.text


# 3. an unreachable or malformed SISAS_NATS_URL: the fix is about that URL, not `sisas up`


def test_an_unreachable_nats_url_names_it_and_how_to_use_the_embedded_server(
    offline: dict[str, str],
) -> None:
    env = {**offline, "SISAS_NATS_URL": "nats://127.0.0.1:1"}
    for command in (["status"], ["up", "--no-dashboard"]):
        line = one_line_error(sisas(*command, env=env))
        assert "nats://127.0.0.1:1" in line
        assert "running" in line and "unset SISAS_NATS_URL" in line
        assert "sisas up" not in line, command


def test_a_nats_url_that_is_not_one_is_malformed_naming_the_expected_form(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    for url in ("http://127.0.0.1:8765", "garbage", "nats://127.0.0.1:1,ftp://x"):
        line = one_line_error(sisas("status", env={**offline, "SISAS_NATS_URL": url}))
        assert f"SISAS_NATS_URL={url!r} is not a NATS URL" in line
        assert "nats://HOST:PORT" in line
    line = one_line_error(
        sisas(
            "security", "init", "--out", str(tmp_path / "sec"), "--url", "http://x:1", env=offline
        )
    )
    assert "--url='http://x:1' is not a NATS URL" in line
    assert not (tmp_path / "sec").exists()


# 4. `sisas down` stops a `sisas up` that runs against SISAS_NATS_URL


def _up(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SISAS, "up", "--no-dashboard"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_down_stops_an_up_against_an_external_server_which_keeps_running(
    env: dict[str, str], tmp_path: Path
) -> None:
    registry = tmp_path / "home" / "up"
    proc = _up(env)
    try:
        deadline = time.monotonic() + 60
        while not list(registry.glob("*.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "sisas up did not register in 60 s"
            time.sleep(0.05)
        down = sisas("down", env=env)
        assert down.returncode == 0, down.stderr
        assert f"stopped sisas up (pid {proc.pid})" in down.stdout
        assert "keeps running" in down.stdout
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped cleanly" in err
    assert not list(registry.glob("*.json"))
    assert "nothing is running" in sisas("down", env=env).stdout
    assert sisas("status", env=env).returncode == 0  # the external server was not touched


def test_down_ignores_the_file_of_an_up_that_was_killed(
    env: dict[str, str], tmp_path: Path
) -> None:
    registry = tmp_path / "home" / "up"
    registry.mkdir(parents=True)
    (registry / "999999.json").write_text('{"pid": 999999, "url": "nats://x:1"}')
    out = sisas("down", env=env)
    assert out.returncode == 0, out.stderr
    assert "nothing is running" in out.stdout
    assert not (registry / "999999.json").exists()


# 6. `sisas up --port <busy>`: a usage error naming the fix, not the nats-server log


def test_up_on_a_port_in_use_says_so_and_exits_2(offline: dict[str, str], busy_port: int) -> None:
    line = one_line_error(sisas("up", "--port", str(busy_port), "--no-dashboard", env=offline))
    assert line == f"error: port {busy_port} is in use: pass --port N (0 = any free port)"
    line = one_line_error(
        sisas("up", "--no-dashboard", env={**offline, "SISAS_PORT": str(busy_port)})
    )
    assert f"port {busy_port} (SISAS_PORT) is in use" in line


# 7. --json where a script wants it; 9. the usage names the command as typed


async def test_audit_export_prints_json_and_its_usage_names_the_command_typed(
    bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        await start(bus, "clustering", "e1", POINTS)
        _, signals = await wait_end(bus, "e1")
    out = tmp_path / "bundle"
    done = await sisas_async("audit", "e1", "--out", str(out), "--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # one object, nothing else on stdout
    assert (doc["run_id"], doc["folder"], doc["ok"], doc["intact"]) == ("e1", str(out), True, True)
    assert doc["deterministic"] is None and doc["rerun"] is None  # no --rerun
    assert doc["signals"] == len(signals) == doc["verify"]["signals"]
    assert doc["artifacts_included"] == doc["artifacts"] > 0
    for name in ("signals.jsonl", "manifest.json", "verdict.json", "report.html", "index.json"):
        assert name in doc["files"]
    typed = sisas("audit", "e1", env=env)
    assert typed.returncode == 2
    assert "Usage: sisas audit [OPTIONS] RUN_ID" in typed.stderr
    assert "audit export" not in typed.stderr and "--out" in typed.stderr
    explicit = sisas("audit", "export", "e1", env=env)
    assert "Usage: sisas audit export [OPTIONS] RUN_ID" in explicit.stderr
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    unwritable = sisas("audit", "e1", "--out", str(a_file / "bundle"), env=env)
    assert f"cannot write the bundle to {a_file / 'bundle'}" in one_line_error(unwritable)


def test_security_permissions_and_keys_public_print_json(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    out = sisas("security", "permissions", "--json", env=offline)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    roles = {r["name"]: r for r in doc["roles"]}
    assert {"orchestrator", "operator", "worker", "auditor", "upstream"} <= set(roles)
    assert "$JS.API.STREAM.DELETE.>" in doc["refused_to_every_role"]
    assert "$JS.API.STREAM.DELETE.>" in roles["auditor"]["refused_publish"]
    assert all(g["what"] for r in roles.values() for g in r["grants"])
    seed = tmp_path / "signing.nk"
    made = json.loads(sisas("keys", "generate", "--out", str(seed), "--json", env=offline).stdout)
    shown = sisas("keys", "public", str(seed), "--json", env=offline)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == made


# 8. "unknown X" errors point at the right fix


def test_replay_diff_of_an_unknown_pipeline_lists_the_loaded_ones(env: dict[str, str]) -> None:
    line = one_line_error(
        sisas("replay", "diff", "--pipeline", "nosuch", "--pipelines", EXAMPLE, env=env)
    )
    assert "no pipeline 'nosuch' (loaded: clustering)" in line
    line = one_line_error(sisas("replay", "diff", "--pipeline", "nosuch", env=env))
    assert "the code of 'nosuch' is not loaded: pass --pipelines" in line


def test_a_trust_file_that_is_not_text_is_a_usage_error(
    tmp_path: Path, offline: dict[str, str]
) -> None:
    keys = tmp_path / "keys.bin"
    keys.write_bytes(bytes(range(128, 256)))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    line = one_line_error(sisas("audit", "verify", str(bundle), "--trust", str(keys), env=offline))
    assert f"--trust {keys} is not a text file" in line
