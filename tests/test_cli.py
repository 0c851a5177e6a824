"""The sisas command as a user runs it: real processes, a real server."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import msgspec
import pytest

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.schemas import COMMITTED_DIR
from sisas.signals import encode_signal
from tests.cli_process import SISAS, base_env, fresh_env, sisas
from tests.conftest import NatsServer
from tests.log_contract import run_signals
from tests.runs import EXAMPLE, POINTS_FILE


@pytest.fixture
def env(nats_server: NatsServer, tmp_path: Path) -> dict[str, str]:
    return base_env(
        SISAS_NATS_URL=nats_server.url, SISAS_HOME=str(tmp_path / "home"), SISAS_REPLICAS="1"
    )


def test_version_and_help_speak_to_a_newcomer(env: dict[str, str]) -> None:
    out = sisas("--version", env=env)
    assert out.returncode == 0
    assert out.stdout.startswith("sisas, version ")
    top = sisas("--help", env=env).stdout
    for cmd in ("up", "down", "status", "signals", "tail", "schema"):
        assert f"  {cmd} " in top
    assert "SISAS_NATS_URL" in top
    for cmd in (["up"], ["signals"], ["tail"], ["schema", "export"], ["status"]):
        assert sisas(*cmd, "--help", env=env).returncode == 0


def test_a_wrong_command_or_argument_is_a_usage_error(env: dict[str, str]) -> None:
    assert sisas("frobnicate", env=env).returncode == 2
    bad = sisas("signals", "no.dots", env=env)
    assert bad.returncode == 2
    assert "invalid run id" in bad.stderr


async def test_signals_prints_a_run_and_json_validates_against_the_schemas(
    bus: Bus, env: dict[str, str]
) -> None:
    sigs = run_signals("r1", 4)
    await bus.log.append(sigs, expected_last_seq=0)
    table = sisas("signals", "r1", env=env)
    assert table.returncode == 0, table.stderr
    assert "chain intact: 4 signals" in table.stdout
    assert "phase_scheduled" in table.stdout
    out = sisas("signals", "r1", "--json", env=env)
    data = json.loads(out.stdout)
    assert data["intact"] is True
    assert [s["signal"]["seq"] for s in data["signals"]] == [1, 2, 3, 4]
    assert [s["stream_seq"] for s in data["signals"]] == [1, 1, 1, 1]  # one commit
    assert [s["index"] for s in data["signals"]] == [0, 1, 2, 3]
    for entry in data["signals"]:
        wire = entry["signal"]
        kind = wire["body"]["kind"]
        schema = json.loads((COMMITTED_DIR / f"{kind}.json").read_text())
        jsonschema.validate(wire, schema, format_checker=jsonschema.FormatChecker())
        # what --json prints is what is on the wire, byte for byte once re-encoded
        assert msgspec.json.encode(wire, order="sorted") == encode_signal(sigs[wire["seq"] - 1])


async def test_signals_of_a_tampered_run_fail_and_say_where(bus: Bus, env: dict[str, str]) -> None:
    sigs = run_signals("r1", 3)
    await bus.log.append(sigs[:2], expected_last_seq=0)
    forged = msgspec.structs.replace(sigs[2], attempt=7)
    await bus.js.publish("sisas.run.pipe.r1.p2.phase_scheduled", encode_signal(forged))
    out = sisas("signals", "r1", env=env)
    assert out.returncode == 1
    assert "CORRUPT" in out.stdout
    assert "hash mismatch" in out.stdout
    data = json.loads(sisas("signals", "r1", "--json", env=env).stdout)
    assert data["intact"] is False
    assert data["corrupt"][0]["stream_seq"] == 2


def test_an_unknown_run_exits_2(env: dict[str, str]) -> None:
    out = sisas("signals", "nope", env=env)
    assert out.returncode == 2
    assert "no signals for run 'nope'" in out.stderr


async def test_tail_follows_the_log_including_bad_messages(bus: Bus, env: dict[str, str]) -> None:
    await bus.log.append(run_signals("r1", 2), expected_last_seq=0)
    await bus.js.publish("sisas.run.pipe.r1._.junk", b"{not json")
    proc = subprocess.Popen(
        [*SISAS, "tail", "--all", "--count", "5", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    await bus.log.append(run_signals("r2", 2), expected_last_seq=0)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5
    assert lines[2]["error"].startswith("not JSON")
    assert lines[2]["stream_seq"] == 2
    assert [line["signal"]["run_id"] for line in lines if "signal" in line] == [
        "r1",
        "r1",
        "r2",
        "r2",
    ]


def test_schema_export_writes_the_committed_schemas(tmp_path: Path, env: dict[str, str]) -> None:
    out = sisas("schema", "export", str(tmp_path / "schemas"), env=env)
    assert out.returncode == 0
    written = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert written == sorted(p.name for p in COMMITTED_DIR.iterdir())


def test_an_unreachable_server_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    out = sisas("status", env={**env, "SISAS_NATS_URL": "nats://127.0.0.1:1"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nats://127.0.0.1:1" in lines[0]
    assert "unset SISAS_NATS_URL" in lines[0]  # `sisas up` cannot help a server it does not run


def test_up_runs_until_interrupted_and_a_second_up_refuses(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    proc = subprocess.Popen(
        [*SISAS, "up", "--dashboard-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "home" / "server.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = json.loads((tmp_path / "home" / "server.json").read_text())["url"]
        second = sisas("up", env=env)
        assert second.returncode == 2
        assert "already up" in second.stderr
        status = json.loads(sisas("status", "--json", env=env).stdout)
        assert status["url"] == url
        assert status["running"] is True
        assert status["streams"]["SISAS_LOG"]["messages"] == 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert url in out
    assert "stopped cleanly" in err
    assert not (tmp_path / "home" / "server.json").exists()
    # and it comes back on the same folder with its streams verified, not recreated
    status = json.loads(sisas("status", "--json", env=env).stdout)
    assert status["running"] is False


def test_down_stops_a_running_up(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    proc = subprocess.Popen(
        [*SISAS, "up", "--dashboard-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "home" / "server.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = sisas("down", env=env)
    assert out.returncode == 0
    assert "stopped" in out.stdout
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "nothing is running" in sisas("down", env=env).stdout


def test_settings_errors_are_usage_errors(env: dict[str, str]) -> None:
    out = sisas("status", env={**env, "SISAS_REPLICAS": "lots"})
    assert out.returncode == 2
    assert "SISAS_REPLICAS" in out.stderr


def test_settings_defaults_match_the_docs() -> None:
    s = Settings.from_env({})
    assert (str(s.home), s.sync, s.port) == (".sisas", "always", 0)


def test_demo_runs_the_example_pipeline_on_a_fresh_folder(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    out = sisas("demo", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "completed in" in out.stdout
    assert "verified (hashes, links, placement, refold): intact" in out.stdout
    assert "where to look next" in out.stdout
    assert "certificate: 300 of 300 contracts valid" in out.stdout
    assert "INV-7.1 held" in out.stdout and "INV-7.5 held" in out.stdout
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    shown = sisas("signals", run_id, "--json", env=env)
    assert shown.returncode == 0
    data = json.loads(shown.stdout)
    assert data["intact"] is True
    kinds = [s["signal"]["body"]["kind"] for s in data["signals"]]
    assert kinds[0] == "run_requested"
    assert kinds[-1] == "run_completed"
    scheduled = [s for s in data["signals"] if s["signal"]["body"]["kind"] == "phase_scheduled"]
    assert sum(s["signal"]["phase"] == "execute" for s in scheduled) == 12  # the 300, chunked


def test_run_wait_json_on_a_fresh_folder_completes_with_a_fingerprint(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    args = ["run", "clustering", "--pipelines", EXAMPLE, "--input", POINTS_FILE, "--seed", "7"]
    out = sisas(*args, "--wait", "--json", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["pipeline"] == "clustering"
    assert result["fingerprint"].startswith("sha256:")
    again = json.loads(
        sisas(*args, "--wait", "--json", env=env, timeout=120).stdout.strip().splitlines()[-1]
    )
    assert again["fingerprint"] == result["fingerprint"]  # same seed, same fingerprint
    assert again["run_id"] != result["run_id"]


def test_run_with_a_bad_input_exits_1_and_names_each_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "", "values": [1, "x"]}')
    out = sisas(
        "run",
        "clustering",
        "--pipelines",
        EXAMPLE,
        "--input",
        str(bad),
        "--wait",
        env=fresh_env(tmp_path),
        timeout=120,
    )
    assert out.returncode == 1
    assert "input.name" in out.stdout
    assert "input.values[1]" in out.stdout
    js = sisas(
        "run",
        "clustering",
        "--pipelines",
        EXAMPLE,
        "--input",
        str(bad),
        "--wait",
        "--json",
        env=fresh_env(tmp_path),
        timeout=120,
    )
    result = json.loads(js.stdout.strip().splitlines()[-1])
    assert result["status"] == "failed"
    assert {v["path"] for v in result["violations"]} == {"input.name", "input.values[1]"}


def test_run_usage_errors_exit_2(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    unknown = sisas("run", "nosuch", env=env)
    assert unknown.returncode == 2
    assert "unknown pipeline 'nosuch'" in unknown.stderr
    missing = sisas("run", "clustering", "--input", str(tmp_path / "none.json"), env=env)
    assert missing.returncode == 2
    assert "cannot read input" in missing.stderr
    (tmp_path / "x.json").write_text("{nope")
    notjson = sisas("run", "clustering", "--input", str(tmp_path / "x.json"), env=env)
    assert notjson.returncode == 2
    assert "is not JSON" in notjson.stderr
    badset = sisas("run", "clustering", "--pipelines", EXAMPLE, "--set", "oops", env=env)
    assert badset.returncode == 2
    assert "KEY=VALUE" in badset.stderr


def test_an_idempotency_key_names_one_run(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    args = [
        "run",
        "clustering",
        "--pipelines",
        EXAMPLE,
        "--input",
        POINTS_FILE,
        "--idempotency-key",
        "batch-42",
        "--wait",
        "--json",
    ]
    first = json.loads(sisas(*args, env=env, timeout=120).stdout.strip().splitlines()[-1])
    second = json.loads(sisas(*args, env=env, timeout=120).stdout.strip().splitlines()[-1])
    assert first["run_id"] == second["run_id"]
    assert second["status"] == "completed"
    shown = json.loads(sisas("signals", first["run_id"], "--json", env=env).stdout)
    kinds = [s["signal"]["body"]["kind"] for s in shown["signals"]]
    assert kinds.count("run_requested") == 1


def test_batch_runs_every_input_and_summarises(tmp_path: Path) -> None:
    good = json.loads(Path(POINTS_FILE).read_text())
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(good))
    (folder / "b.json").write_text(json.dumps({**good, "k": 2}))
    (folder / "c.json").write_text(json.dumps({"name": "", "values": [1]}))
    out = sisas(
        "batch",
        "clustering",
        "--pipelines",
        EXAMPLE,
        "--inputs",
        str(folder),
        "--seed",
        "7",
        "--json",
        env=fresh_env(tmp_path),
        timeout=120,
    )
    assert out.returncode == 1  # one input breaks the contract
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["runs"], summary["completed"], summary["failed"]) == (3, 2, 1)
    assert [r["input"] for r in summary["results"]] == ["a.json", "b.json", "c.json"]
    assert summary["results"][2]["error"].startswith("ContractViolation")
    (folder / "d.json").write_text("{not json")
    bad = sisas(
        "batch",
        "clustering",
        "--pipelines",
        EXAMPLE,
        "--inputs",
        str(folder),
        env=fresh_env(tmp_path),
    )
    assert bad.returncode == 2
    assert "d.json is not JSON" in bad.stderr
    (folder / "e.json").write_text("")
    both = sisas("batch", "clustering", "--pipelines", EXAMPLE, "--inputs", str(folder),
                 env=fresh_env(tmp_path))  # fmt: skip
    assert both.returncode == 2
    said = " ".join(both.stderr.split())
    assert "2 inputs are not JSON: d.json (" in said and "; e.json (" in said, said
    assert said.endswith("nothing was started")


def _completed_outputs(run_id: str, env: dict[str, str]) -> dict[str, str]:
    shown = json.loads(sisas("signals", run_id, "--json", env=env).stdout)
    last = shown["signals"][-1]["signal"]["body"]
    assert last["kind"] == "run_completed"
    return dict(last["outputs"])


async def test_resume_reuses_verified_outputs_and_refuses_tampered_ones(tmp_path: Path) -> None:
    from sisas.bus.runtime import open_bus
    from sisas.bus.settings import Settings

    env = fresh_env(tmp_path)
    base = ["run", "clustering", "--pipelines", EXAMPLE, "--wait", "--json"]
    first = json.loads(
        sisas(*base, "--input", POINTS_FILE, "--seed", "7", env=env, timeout=120)
        .stdout.strip()
        .splitlines()[-1]
    )
    resumed = sisas(*base, "--resume", first["run_id"], "--from", "cluster", env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    second = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert _completed_outputs(second["run_id"], env) == _completed_outputs(first["run_id"], env)
    shown = json.loads(sisas("signals", second["run_id"], "--json", env=env).stdout)
    bodies = [(s["signal"].get("phase", ""), s["signal"]["body"]) for s in shown["signals"]]
    assert bodies[0][1]["resume_of"] == first["run_id"]
    skipped = {p for p, b in bodies if b["kind"] == "phase_skipped" and b["reason"] == "resumed"}
    assert skipped == {"load", "clean", "score"}
    ran = {p for p, b in bodies if b["kind"] == "phase_completed" and "item" not in b}
    assert ran == {"cluster", "report"}
    # Damage the recorded output of `clean`: the resume must refuse to build on it.
    clean = next(b for p, b in bodies if p == "clean" and b["kind"] == "phase_skipped")
    async with open_bus(Settings(home=tmp_path / "home")) as bus:
        kv = await bus.js.key_value("sisas-blobs")
        await kv.put(clean["reused_artifact"].removeprefix("sha256:"), b"[1.0, 2.0]")
    refused = sisas(*base, "--resume", first["run_id"], "--from", "report", env=env, timeout=120)
    assert refused.returncode == 2
    assert "cannot reuse clean" in refused.stderr
