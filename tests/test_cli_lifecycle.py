"""A run's lifecycle from the command line: who runs it, what the user is told while it
waits, cancelling, interrupting, repeating it, its live progress. Real processes, a real
server; the handlers a test needs run in the test's own process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus
from sisas.client.starting import POLICIES, check_settings
from sisas.errors import UsageError
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.signals import StoredSignal
from sisas.signals.plan import PhasePlan
from tests.cli_process import (
    PATIENCE,
    SISAS,
    Command,
    base_env,
    fresh_env,
    last_json,
    sisas,
    sisas_async,
)
from tests.conftest import NatsServer
from tests.log_contract import run_signals
from tests.runs import EXAMPLE, POINTS_FILE, TEST_PIPES


@pytest.fixture
def env(nats_server: NatsServer, tmp_path: Path) -> dict[str, str]:
    """A shared server (as `sisas up` or SISAS_NATS_URL give) with nothing running on it."""
    return base_env(
        SISAS_NATS_URL=nats_server.url, SISAS_HOME=str(tmp_path / "home"), SISAS_REPLICAS="1"
    )


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def last_kind(bus: Bus, run_id: str) -> str:
    last = await bus.log.last_of_run(run_id)
    return last.signal.kind if isinstance(last, StoredSignal) else ""


# -- who serves a pipeline ------------------------------------------------------------


async def test_a_run_on_a_server_whose_workers_lack_its_pipeline_runs_a_worker_itself(
    bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    # The README tour: `sisas up` runs an orchestrator (here) and workers for other
    # pipelines; an earlier run hosted its own worker, which registered the plan and left.
    plan = load_pipelines([EXAMPLE], entry_points=False)["clustering"].plan()
    await PlanRegistry(bus.js).publish(plan)
    async with running_services(bus, {}):
        for _ in range(2):
            run = await sisas_async(
                "run", EXAMPLE, "--input", POINTS_FILE, "--wait", "--json", env=env
            )
            assert run.returncode == 0, run.stderr
            assert last_json(run.stdout)["status"] == "completed"
        inputs = tmp_path / "inputs"
        inputs.mkdir()
        (inputs / "a.json").write_text(Path(POINTS_FILE).read_text())
        batch = await sisas_async("batch", EXAMPLE, "--inputs", str(inputs), "--json", env=env)
        assert batch.returncode == 0, batch.stderr
        assert last_json(batch.stdout)["completed"] == 1


async def test_waiting_for_a_pipeline_no_worker_runs_names_the_fix_and_so_does_an_interrupt(
    bus: Bus, env: dict[str, str]
) -> None:
    plan = load_pipelines([EXAMPLE], entry_points=False)["clustering"].plan()
    await PlanRegistry(bus.js).publish(plan)
    async with running_services(bus, {}):
        cmd = await Command.start("run", "clustering", "--input", POINTS_FILE, "--wait", env=env)
        await cmd.until("no live worker runs clustering")
        assert "sisas worker --pipelines" in cmd.out
        assert "sisas up` with `--pipelines" in cmd.out
        cmd.proc.send_signal(signal.SIGINT)
        assert await cmd.finish() == 130
    run_id = cmd.out.split("run ", 1)[1].split()[0]
    assert f"stopped following run {run_id}; it goes on" in cmd.err
    assert f"sisas cancel {run_id}" in cmd.err


# -- no orchestrator -------------------------------------------------------------------


async def test_a_request_no_orchestrator_takes_is_queued_and_runs_when_one_starts(
    bus: Bus, env: dict[str, str]
) -> None:
    cmd = await Command.start("run", EXAMPLE, "--input", POINTS_FILE, "--wait", "--json", env=env)
    await cmd.until("the request is queued")
    assert "sisas orchestrator" in cmd.err
    async with running_services(bus, {}):  # an orchestrator comes up
        assert await cmd.finish() == 0, cmd.err
    assert "Traceback" not in cmd.err
    assert last_json(cmd.out)["status"] == "completed"


async def test_cancel_with_no_orchestrator_says_it_is_queued_until_one_records_it(
    bus: Bus, env: dict[str, str]
) -> None:
    await bus.log.append(run_signals("r1", 2), expected_last_seq=0)
    cancel = await sisas_async("cancel", "r1", env=env)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancellation of r1 is queued" in cancel.stdout
    assert "sisas orchestrator" in cancel.stdout
    assert await last_kind(bus, "r1") != "run_cancelled"
    async with running_services(bus, {}):
        await eventually(lambda: _is(bus, "r1", "run_cancelled"))


async def _is(bus: Bus, run_id: str, kind: str) -> bool:
    return await last_kind(bus, run_id) == kind


async def test_cancel_waits_until_a_running_orchestrator_records_it(
    bus: Bus, env: dict[str, str]
) -> None:
    await bus.log.append(run_signals("r2", 2), expected_last_seq=0)
    async with running_services(bus, {}):
        cancel = await sisas_async("cancel", "r2", "--reason", "wrong input", env=env)
        assert cancel.returncode == 0, cancel.stderr
        assert "run r2 cancelled (run_cancelled is in the log)" in cancel.stdout
        assert await last_kind(bus, "r2") == "run_cancelled"


def test_an_interrupted_run_on_a_fresh_folder_says_how_it_goes_on_and_cancel_ends_it(
    tmp_path: Path,
) -> None:
    env = fresh_env(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    data = tmp_path / "slow.json"
    data.write_text(json.dumps({"seconds": 2, "marker_dir": str(markers)}))
    proc = subprocess.Popen(
        [*SISAS, "run", "slow", "--pipelines", TEST_PIPES, "--input", str(data), "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + PATIENCE
    while not any(markers.iterdir()):  # its first phase is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130
    assert "is left unfinished" in err
    run_id = err.split("run ", 1)[1].split()[0]
    assert "sisas up --pipelines" in err
    assert f"sisas cancel {run_id}" in err
    # no server runs now: cancel runs an orchestrator until the cancellation is recorded
    cancelled = sisas("cancel", run_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"run {run_id} cancelled" in cancelled.stdout
    shown = json.loads(sisas("signals", run_id, "--json", env=env).stdout)
    assert shown["signals"][-1]["signal"]["body"]["kind"] == "run_cancelled"
    again = sisas("cancel", run_id, env=env)
    assert again.returncode == 2
    assert "already ended" in again.stderr


# -- a repeated idempotency key --------------------------------------------------------


def test_a_repeated_idempotency_key_reports_the_run_it_names(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    keyed = ["run", EXAMPLE, "--idempotency-key", "k1", "--wait", "--json"]
    first = sisas(*keyed, "--input", POINTS_FILE, "--seed", "5", env=env)
    assert first.returncode == 0, first.stderr
    run_id = last_json(first.stdout)["run_id"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "other", "values": [1.0, 2.0, 9.0, 10.0]}))
    conflict = sisas(*keyed, "--input", str(other), "--seed", "3", env=env)
    assert conflict.returncode == 2
    assert f"idempotency key 'k1' names run {run_id}, started with another input" in (
        conflict.stderr
    )
    assert "pass a new --idempotency-key" in conflict.stderr
    same = sisas(*keyed, "--input", POINTS_FILE, "--seed", "3", env=env)
    assert same.returncode == 0, same.stderr
    assert last_json(same.stdout)["run_id"] == run_id
    assert f"run {run_id} exists already for idempotency key 'k1' (seed 5" in same.stderr
    assert "--seed 3 is ignored: the run has seed 5" in same.stderr
    human = sisas("run", EXAMPLE, "--idempotency-key", "k1", "--seed", "3", env=env)
    assert human.returncode == 0, human.stderr
    assert "requested (seed 3)" not in human.stdout
    assert f"run {run_id} completed" in human.stdout
    shown = json.loads(sisas("signals", run_id, "--json", env=env).stdout)
    requested = [s["signal"]["body"] for s in shown["signals"]]
    assert [b["seed"] for b in requested if b["kind"] == "run_requested"] == [5]


# -- the live views --------------------------------------------------------------------


def test_a_long_state_text_leaves_every_row_its_name_bar_and_count(tmp_path: Path) -> None:
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
        env=fresh_env(tmp_path, columns=80),
    )
    assert out.returncode == 1
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line[:1].isalpha()}
    for phase in ("load", "clean", "score", "cluster", "report", "publish"):
        assert phase in rows, out.stdout
        assert len(rows[phase]) <= 80
    assert "0/1 failed: ContractViolation" in rows["load"]
    assert "0/1 pending" in rows["cluster"]
    assert "1/1 skipped" in rows["publish"]
    # the whole error is in the summary below the rows
    assert "ContractViolation in phase load: input of load violates its contract at " in (
        out.stdout
    )


# -- --set -------------------------------------------------------------------------------


def test_set_keys_sisas_would_not_apply_are_refused_with_the_valid_ones(
    env: dict[str, str], tmp_path: Path
) -> None:
    phases = "load, clean, score, cluster, report, publish"
    run = ["run", EXAMPLE, "--input", POINTS_FILE, "--set"]
    nophase = sisas(*run, "nosuchphase.enabled=false", env=env)
    assert nophase.returncode == 2
    assert f"clustering has no phase 'nosuchphase' (phases: {phases})" in nophase.stderr
    policy = sisas(*run, "clean.retries=banana", env=env)
    assert policy.returncode == 2
    assert "retries is a policy of phase clean" in policy.stderr
    assert "clean.enabled" in policy.stderr
    notbool = sisas(*run, "clean.enabled=maybe", env=env)
    assert notbool.returncode == 2
    assert "clean.enabled takes true or false" in notbool.stderr
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.json").write_text(Path(POINTS_FILE).read_text())
    batch = sisas("batch", EXAMPLE, "--inputs", str(inputs), "--set", "nosuch.enabled=1", env=env)
    assert batch.returncode == 2
    assert "clustering has no phase 'nosuch'" in batch.stderr


def test_set_passes_a_pipelines_own_keys_to_its_phases() -> None:
    plan = load_pipelines([EXAMPLE], entry_points=False)["clustering"].plan()
    check_settings(
        {"clean.flaky": True, "executor.chunk": 60, "publish.enabled": True, "seed": 3}, plan
    )
    with pytest.raises(UsageError, match="clustering has no phase 'nosuch'"):
        check_settings({"nosuch.enabled": False}, plan)
    assert frozenset(PhasePlan.__struct_fields__) > POLICIES


def test_batch_says_when_a_circuit_opens_and_holds_its_runs_back(tmp_path: Path) -> None:
    """Runs of one batch failing in a row open the phase's circuit (threshold 2 for
    `breaker`): the batch says so once, naming the circuit and the settings, since the
    runs then wait out its cool-down with nothing else to show for it."""
    env = fresh_env(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(8):  # concurrent failures count last-writer-wins: more than 2
        (inputs / f"{i}.json").write_text('"bad"')
    out = sisas("batch", "breaker", "--pipelines", TEST_PIPES, "--inputs", str(inputs), env=env)
    assert out.returncode == 1, out.stderr
    said = " ".join(out.stdout.split())
    assert said.count("circuit breaker.fragile opened (") == 1, out.stdout
    assert "circuit_cooldown" in said and "docs/pipelines.md, Circuit breakers" in said
