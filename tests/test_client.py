"""The Python client against a real nats-server: start, result, outputs, signals,
idempotency, failures, cancel, runs; and the sync client on the embedded server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sisas import Client, SyncClient
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.errors import RunCancelledError, RunFailedError, UsageError
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.signals import semantic_digest
from tests.runs import EXAMPLE, POINTS, TEST_PIPES

INPUT = json.loads(POINTS)


@pytest.fixture
async def client(bus: Bus, settings: Settings) -> Client:
    pipes = load_pipelines([EXAMPLE, TEST_PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        async with await Client.connect(settings) as c:
            yield c


async def test_a_run_started_by_the_client_gives_its_result_outputs_and_signals(
    client: Client,
) -> None:
    handle = await client.start("clustering", INPUT, seed=7, config={"clean.flaky": True})
    result = await handle.result(timeout=60)
    assert result.ok and result.status == "completed" and result.run_id == handle.run_id
    assert result.fingerprint.startswith("sha256:") and result.seed == 7
    assert result.retries == 1  # clean.flaky: the first attempt of clean fails
    assert set(result.outputs) == {"load", "clean", "score", "cluster", "report"}
    report = await client.output(handle.run_id, "report")
    assert report["name"] == INPUT["name"] and report["k"] == INPUT.get("k", 3)
    scores = await handle.output("score")  # a fan-out: its items' outputs in item order
    items = [semantic_digest(s) for s in scores]  # a fan-out's digest is over its items'
    assert semantic_digest(items) == result.outputs["score"]
    kinds = [s.kind async for s in handle.signals()]
    assert kinds[:2] == ["run_requested", "run_started"] and kinds[-1] == "run_completed"
    assert len(kinds) == result.signals
    assert await handle.status() == "completed"
    listed = await client.runs(pipeline="clustering")
    assert [r["run_id"] for r in listed] == [handle.run_id]


async def test_an_idempotency_key_names_one_run(client: Client) -> None:
    first = await client.request("clustering", INPUT, seed=3, idempotency_key="nightly-1")
    again = await client.request("clustering", INPUT, seed=9, idempotency_key="nightly-1")
    assert again.handle.run_id == first.handle.run_id
    assert first.existing is None
    await first.handle.result(timeout=60)
    after = await client.request("clustering", INPUT, idempotency_key="nightly-1")
    assert after.existing is not None and after.seed == 3  # nothing new was started
    with pytest.raises(UsageError, match="idempotency key 'nightly-1' names run"):
        await client.start("clustering", {**INPUT, "k": 2}, idempotency_key="nightly-1")


async def test_a_failed_run_raises_a_typed_error_naming_the_phase(client: Client) -> None:
    handle = await client.start("clustering", {"name": "", "values": [1, "x"]})
    with pytest.raises(RunFailedError) as caught:
        await handle.result(timeout=60)
    result = caught.value.result
    assert result.status == "failed" and result.failed_phase == "load"
    assert result.error is not None and result.error.kind == "ContractViolation"
    assert "load" in str(caught.value)
    same = await handle.result(check=False)
    assert same.status == "failed"
    with pytest.raises(UsageError, match="has no output: it is failed"):
        await client.output(handle.run_id, "load")


async def test_cancel_ends_a_run_and_result_says_so(client: Client) -> None:
    handle = await client.start("slow", {"seconds": 2.0})
    async for signal in handle.signals():
        if signal.kind == "phase_started":
            break
    assert await handle.cancel("not needed after all") is True
    with pytest.raises(RunCancelledError, match=r"cancelled by .*: not needed after all") as err:
        await handle.result(timeout=60)
    assert err.value.kind == "Cancelled" and err.value.detail == "not needed after all"
    assert await handle.cancel() is False  # it has ended: nothing to cancel


async def test_bad_requests_are_refused_with_the_fix(client: Client) -> None:
    with pytest.raises(UsageError, match=r"unknown pipeline 'nosuch' \(registered: .*clustering"):
        await client.start("nosuch", {})
    with pytest.raises(UsageError, match="has no phase 'nosuch'"):
        await client.start("clustering", INPUT, config={"nosuch.enabled": False})
    with pytest.raises(UsageError, match="cannot be encoded as JSON"):
        await client.start("clustering", {"when": object()})
    with pytest.raises(UsageError, match="no run 'r-none' in this log"):
        await client.cancel("r-none")
    with pytest.raises(TimeoutError):
        await client.handle("r-none").result(timeout=0.5)  # never requested: waits


def test_the_sync_client_runs_pipelines_on_the_embedded_server(tmp_path: Path) -> None:
    """No server, no `sisas up`: the client starts the embedded server and serves the
    code it was given, as `sisas run CODE` does."""
    settings = Settings(home=tmp_path / "home", replicas=1)
    with SyncClient.connect(settings, pipelines=[EXAMPLE, TEST_PIPES]) as client:
        handle = client.start("clustering", INPUT, seed=7)
        result = handle.result(timeout=60)
        assert result.status == "completed"
        assert client.output(handle.run_id, "report")["name"] == INPUT["name"]
        kinds = [s.kind for s in handle.signals()]
        assert kinds[-1] == "run_completed"
        slow = client.start("slow", {"seconds": 1.0})
        assert slow.cancel() is True
        assert slow.result(timeout=60, check=False).status == "cancelled"
    assert not (tmp_path / "home" / "server.json").exists()  # the server it started is gone


async def test_a_run_asked_for_on_a_server_nobody_serves_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", replicas=1)
    async with await Client.connect(settings) as client:
        with pytest.raises(UsageError, match="this client does not serve 'clustering'"):
            await client.start("clustering", INPUT)
    await asyncio.sleep(0)


async def test_outputs_and_resume_from_failure_through_the_cli(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    """`sisas output` prints a phase's output; `run --wait --json` carries the outputs;
    `--resume RUN` alone re-executes from the first phase without an output."""
    from tests.cli_process import server_env, sisas_async

    failed = await client.start("clustering", INPUT, seed=7)
    done = await failed.result(timeout=60)
    shown = await sisas_async("output", failed.run_id, "report", env=server_env(settings))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == await client.output(failed.run_id, "report")
    one = await sisas_async(
        "output", failed.run_id, "score", "--item", "1", env=server_env(settings)
    )
    assert json.loads(one.stdout) == (await client.output(failed.run_id, "score"))[1]
    saved = tmp_path / "clean.json"
    wrote = await sisas_async(
        "output", failed.run_id, "clean", "--out", str(saved), env=server_env(settings)
    )
    assert wrote.returncode == 0 and json.loads(saved.read_bytes()) == await failed.output("clean")
    missing = await sisas_async("output", failed.run_id, "nosuch", env=server_env(settings))
    assert missing.returncode == 2 and "has no phase 'nosuch'" in missing.stderr
    assert done.status == "completed"

    data = tmp_path / "in.json"
    data.write_text(json.dumps(INPUT))
    waited = await sisas_async(
        "run",
        "clustering",
        "--input",
        str(data),
        "--wait",
        "--json",
        "--set",
        "report.enabled=false",
        env=server_env(settings),
    )
    last = json.loads(waited.stdout.splitlines()[-1])
    assert last["status"] == "completed", waited.stderr
    assert set(last["outputs"]) == {"load", "clean", "score", "cluster"}
    assert last["values"]["clean"] == await client.output(last["run_id"], "clean")
    assert "score" not in last["values"]  # a fan-out: read it with sisas output

    # every value is a sensor error: clean keeps none, cluster breaks INV-7.1
    broken = await client.start("clustering", {"name": "x", "values": [-1.0, -2.0]}, seed=7)
    state = (await broken.result(check=False)).state
    assert state is not None and state.status == "failed" and state.failed_phase == "cluster"
    again = await client.request("clustering", resume_of=broken.run_id)
    assert again.resume is not None and again.resume.from_phase == "cluster"
    resumed = (await again.handle.result(check=False)).state
    assert resumed is not None and resumed.resume_of == broken.run_id
    reused = [n for n, ps in resumed.phases.items() if ps.skip_reason == "resumed"]
    assert reused == ["load", "clean", "score"]
    cli = await sisas_async(
        "run", "clustering", "--resume", broken.run_id, "--wait", env=server_env(settings)
    )
    assert f"resuming {broken.run_id} from cluster" in cli.stdout, cli.stderr
    nothing = await sisas_async(
        "run", "clustering", "--resume", failed.run_id, env=server_env(settings)
    )
    assert nothing.returncode == 2 and "nothing to re-execute" in nothing.stderr


async def test_a_key_sent_twice_before_its_run_is_logged_is_still_one_request(
    bus: Bus,
) -> None:
    """No orchestrator runs: the first request waits in SISAS_IN, and a second one with
    the same key but another input is refused instead of silently dropped."""
    code = load_pipelines([EXAMPLE], entry_points=False)["clustering"]
    client = Client(bus)
    first = await client.request("clustering", INPUT, seed=4, idempotency_key="k2", code=code)
    assert not first.duplicate and first.existing is None
    with pytest.raises(UsageError, match=r"idempotency key 'k2' names run .* another input"):
        await client.request("clustering", {**INPUT, "k": 2}, idempotency_key="k2", code=code)
    again = await client.request("clustering", INPUT, seed=9, idempotency_key="k2", code=code)
    assert again.duplicate and again.seed == 4 and again.handle.run_id == first.handle.run_id
    with pytest.raises(TimeoutError, match="no orchestrator is running"):
        await again.handle.result(timeout=0.5)


def test_a_sync_client_never_closed_stops_its_server_when_python_exits(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(
        "from sisas import SyncClient\n"
        "from pathlib import Path\n"
        "from sisas.bus.settings import Settings\n"
        f"client = SyncClient.connect(Settings(home=Path({str(tmp_path / 'home')!r})), "
        f"pipelines=[{EXAMPLE!r}])\n"
        f"print(client.start('clustering', {INPUT!r}, seed=7).result(timeout=60).status)\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "completed", done.stderr
    assert not (tmp_path / "home" / "server.json").exists()  # stopped, not left behind
