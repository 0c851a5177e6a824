"""The reference pipelines shipped in examples/, run as a user would run them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from examples.policy_evaluation import pipeline as policy
from sisas.handlers.local import LocalRun
from sisas.signals import InvariantChecked, PhaseCompleted, PhaseFailed
from tests.cli_process import base_env, fresh_env, sisas
from tests.runs import ROOT, rerun_serial_and_parallel, verify_signals

DATA = Path(__file__).parent.parent / "examples" / "policy_evaluation" / "data"
AT = datetime(2026, 11, 1, tzinfo=UTC)

TAXONOMY = ROOT / "examples" / "taxonomy" / "data" / "catalog.json"


def policy_run(input_file: str, seed: int = 7) -> LocalRun:
    run = LocalRun(policy, f"pe-{seed}", at=AT, clock=time.perf_counter)
    run.start((DATA / input_file).read_bytes(), seed=seed)
    run.run()
    return run


def output(run: LocalRun, phase: str) -> object:
    ps = run.state.phase(phase)
    if ps.items is not None:  # a fan-out: its items' outputs, in item order
        return [json.loads(run.artifacts[ps.item_states[i].artifact]) for i in range(ps.items)]
    done = [s for s in run.signals if s.phase == phase and isinstance(s.body, PhaseCompleted)]
    return json.loads(run.artifacts[done[-1].body.artifact])  # type: ignore[union-attr]


def test_policy_evaluation_carves_300_contracts_and_certifies_every_invariant() -> None:
    run = policy_run("plan.json")
    assert run.state.status == "completed", run.state.error
    assert len(output(run, "carve")) == 300  # type: ignore[arg-type]
    assert run.state.phase("execute").items == 12  # 300 contracts in chunks of 25
    certificate = output(run, "certify")
    assert certificate["contracts"] == 300 and certificate["contracts_valid"] == 300  # type: ignore[index]
    assert all(certificate["held"].values())  # type: ignore[index]
    checked = {s.body.invariant for s in run.signals if isinstance(s.body, InvariantChecked)}
    assert {"INV-7.1", "INV-7.2", "INV-7.3", "INV-7.4", "INV-7.5", "CARVE-300"} <= checked
    assert 0.0 <= certificate["score"] <= 3.0  # type: ignore[index]
    assert verify_signals(run.signals).intact
    assert policy_run("plan.json").state.fingerprint == run.state.fingerprint


def test_a_broken_weights_file_fails_inv_7_1_with_the_observed_sum() -> None:
    run = policy_run("broken_weights.json")
    assert run.state.status == "failed" and run.state.failed_phase == "aggregate"
    [inv] = [
        s.body
        for s in run.signals
        if isinstance(s.body, InvariantChecked) and s.body.invariant == "INV-7.1"
    ]
    assert (inv.passed, inv.observed, inv.expected) == (False, 1.1, 1.0)


def test_executor_overrides_are_recorded_and_change_the_chunking() -> None:
    run = LocalRun(policy, "pe-cfg", at=AT, clock=time.perf_counter)
    run.start((DATA / "plan.json").read_bytes(), seed=7, config={"executor.chunk": 60})
    run.run()
    assert run.state.status == "completed"
    assert run.state.phase("execute").items == 5
    assert run.state.config == {"executor.chunk": 60}


async def test_policy_rerun_on_two_workers_equals_serial_across_the_300_executors() -> None:
    run, serial, parallel = await rerun_serial_and_parallel(
        "examples.policy_evaluation", (DATA / "plan.json").read_bytes(), seed=3, workers=2
    )
    assert serial.deterministic and parallel.deterministic
    assert serial.fingerprint == parallel.fingerprint == run.state.fingerprint


LIGHTING = Path(__file__).parent.parent / "examples" / "script_lighting" / "data" / "scripts"


def lighting_run(name: str, **config: object) -> LocalRun:
    from examples.script_lighting import pipeline as lighting

    run = LocalRun(lighting, f"sl-{name.removesuffix('.json')}", at=AT, clock=time.perf_counter)
    run.start((LIGHTING / name).read_bytes(), seed=1, config=config)  # type: ignore[arg-type]
    run.run()
    return run


def test_a_scene_whose_enrichment_fails_is_lit_and_the_run_goes_on() -> None:
    run = lighting_run("glitch.json")
    assert run.state.status == "completed", run.state.error
    lit = output(run, "light")
    assert [scene["enrichment"] == "ok" for scene in lit] == [True, False, True]  # type: ignore[index, union-attr]
    assert lit[1]["emotion"] == "neutral" and "unreadable" in lit[1]["enrichment"]  # type: ignore[index]
    assert all(0.0 <= g["intensity"] <= 1.0 and g["id"] for s in lit for g in s["groups"])  # type: ignore[index, union-attr]
    [cov] = [s.body for s in run.signals if isinstance(s.body, InvariantChecked)]
    assert (cov.invariant, cov.passed, cov.observed) == ("ENRICH-COVERAGE", True, "2/3")
    assert run.state.phase("hardware").status == "skipped"  # side effects: off by default
    assert verify_signals(run.signals).intact


def test_the_hardware_phase_runs_only_when_enabled() -> None:
    run = lighting_run("storm.json", **{"hardware.enabled": True})
    assert run.state.phase("hardware").status == "completed"
    assert output(run, "hardware") == {"sent": 9, "desk": "desk-1"}


def test_the_lighting_batch_over_a_folder_survives_the_failing_enrichment(tmp_path: Path) -> None:
    env = base_env(SISAS_HOME=str(tmp_path))
    out = sisas("batch", "examples.script_lighting", "--inputs", str(LIGHTING), "--json", env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert (doc["runs"], doc["completed"], doc["failed"]) == (3, 3, 0)


def taxonomy_run(**config: object) -> LocalRun:
    from examples.taxonomy import pipeline as taxonomy

    run = LocalRun(taxonomy, "tx", at=AT, clock=time.perf_counter)
    run.start(TAXONOMY.read_bytes(), seed=5, config=config)  # type: ignore[arg-type]
    run.run()
    return run


def test_the_taxonomy_builds_four_levels_and_filters_the_typos() -> None:
    run = taxonomy_run()
    assert run.state.status == "completed", run.state.error
    taxonomy = output(run, "finalise")
    assert taxonomy["terms_per_level"] == [2, 4, 7, 15]  # type: ignore[index]
    assert [r["name"] for r in taxonomy["roots"]] == ["animal", "plant"]  # type: ignore[index]
    assert run.state.phase("normalise").items == 4  # S1: one item per level 0-3
    levels = output(run, "normalise")
    names = {t["name"] for lv in levels for t in lv["terms"]}  # type: ignore[union-attr,index]
    assert {"mamal", "brid", "eagel"} <= names  # the typos survive S1 ...
    kept = {t["name"] for lv in output(run, "filter") for t in lv["terms"]}  # type: ignore[union-attr,index]
    assert not {"mamal", "brid", "eagel"} & kept  # ... and S2 drops them
    assert {"wolf", "songbird", "iris", "animal"} <= kept  # `Wolves`, `Song birds`, `Fauna`
    assert verify_signals(run.signals).intact


def test_a_verification_failure_quarantines_its_output() -> None:
    run = taxonomy_run(**{"filter.min_support": 1})
    assert (run.state.status, run.state.failed_phase) == ("failed", "verify")
    [failed] = [s.body for s in run.signals if isinstance(s.body, PhaseFailed)]
    assert failed.error.kind == "InvariantViolation"
    quarantined = json.loads(run.artifacts[failed.quarantined_artifact])
    assert quarantined["conflicts"] == ["2:canine (mamal, mammal)", "2:raptor (bird, brid)"]
    assert run.state.phase("verify").quarantined == failed.quarantined_artifact
    assert run.state.phase("finalise").status == "pending"  # never given downstream
    assert verify_signals(run.signals).intact


async def test_the_quarantined_output_is_rerun_and_compared_too() -> None:
    run, serial, _ = await rerun_serial_and_parallel(
        "examples.taxonomy",
        b'{"name": "x", "records": [{"id": "a", "path": "A>B>C"},{"id": "b", "path": "A>D>C"}]}',
        seed=1,
        workers=1,
    )
    assert run.state.failed_phase == "verify"
    [verify] = [p for p in serial.phases if p.phase == "verify"]
    assert verify.recorded_status == "failed" and verify.recorded_digest.startswith("sha256:")
    assert verify.equal and verify.new_digest == verify.recorded_digest


def test_taxonomy_resume_from_s2_reexecutes_only_s2_s3_and_finalise(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    base = ["run", "examples.taxonomy", "--wait", "--json"]
    first = sisas(*base, "--seed", "4", "--set", "filter.min_support=1", env=env)
    assert first.returncode == 1, first.stderr  # verify fails: two terms with two parents
    failed = json.loads(first.stdout.strip().splitlines()[-1])
    assert failed["failed_phase"] == "verify"
    resumed = sisas(
        *base,
        "--resume",
        failed["run_id"],
        "--from",
        "filter",
        "--set",
        "filter.min_support=2",
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    run_id = json.loads(resumed.stdout.strip().splitlines()[-1])["run_id"]
    shown = json.loads(sisas("signals", run_id, "--json", env=env).stdout)
    bodies = [(s["signal"].get("phase", ""), s["signal"]["body"]) for s in shown["signals"]]
    started = [p for p, b in bodies if b["kind"] == "phase_started"]
    assert started == ["filter", "verify", "finalise"]  # each exactly once, nothing else
    skipped = {p: b for p, b in bodies if b["kind"] == "phase_skipped"}
    assert set(skipped) == {"extract", "normalise"}
    assert all(b["reason"] == "resumed" for b in skipped.values())
    assert len(skipped["normalise"]["reused_items"]) == 4  # S1's four levels reused
    verified = sisas("replay", "verify", run_id, env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The failed run's quarantined output is there to inspect.
    old = json.loads(sisas("signals", failed["run_id"], "--json", env=env).stdout)
    [quarantine] = [
        s["signal"]["body"]["quarantined_artifact"]
        for s in old["signals"]
        if s["signal"]["body"]["kind"] == "phase_failed"
    ]
    fetched = sisas("artifact", quarantine, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["conflicts"][0] == "2:canine (mamal, mammal)"


TASKS = ROOT / "examples" / "task_execution" / "data"


def _signals(run_id: str, env: dict[str, str]) -> list[dict[str, Any]]:
    shown = sisas("signals", run_id, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    return [s["signal"] for s in json.loads(shown.stdout)["signals"]]


def test_tasks_run_as_processes_and_the_failing_adapters_breaker_opens(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    ok = sisas("run", "examples.task_execution", "--wait", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    signals = _signals(json.loads(ok.stdout.strip().splitlines()[-1])["run_id"], env)
    accepted = [
        s["body"]["observed"]
        for s in signals
        if s["body"]["kind"] == "invariant_checked" and s["body"]["invariant"] == "ACCEPT-FILE"
    ]
    assert len(accepted) == 6  # every task's produced file, with its sha256, in the log
    # The failing queue: the shell adapter's tool is missing, one python task hangs.
    bad = sisas(
        "run", "examples.task_execution", "--input", str(TASKS / "failing_adapter.json"),
        "--wait", "--json", env=env,
    )  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    result = json.loads(bad.stdout.strip().splitlines()[-1])
    assert result["failed_phase"] == "report"  # TASKS-ACCEPTED: the queue ran to its end
    signals = _signals(result["run_id"], env)
    states: dict[tuple[str, int], list[str]] = {}
    for s in signals:
        body = s["body"]
        if s.get("phase", "").endswith("_run") and "item" in body:
            key = (s["phase"], body["item"])
            if body["kind"] == "phase_started":
                states.setdefault(key, []).append("IN_PROGRESS")
            elif body["kind"] == "phase_failed":
                timed_out = body["error"]["kind"] == "Timeout"
                states[key].append("TIMEOUT" if timed_out else "FAILED")
            elif body["kind"] == "phase_completed":
                states[key].append("COMPLETED")
    assert states[("python_run", 0)] == ["IN_PROGRESS", "COMPLETED"]
    assert states[("python_run", 1)] == ["IN_PROGRESS", "TIMEOUT"] * 2  # retried once
    assert all(states[("shell_run", i)] == ["IN_PROGRESS", "FAILED"] * 2 for i in range(3))
    opened = [s for s in signals if s["body"]["kind"] == "circuit_opened"]
    assert [s["body"]["scope"] for s in opened] == ["task_execution.shell_run"]
    # While open, the shell adapter's attempts are released only at the cool-down's end
    # (2 s after it opened), and none starts before its release: an ordering of the
    # timestamps the log records, not a measured duration.
    opened_at = datetime.fromisoformat(opened[0]["at"])
    cooldown_end = opened_at + timedelta(seconds=2.0)
    release = {
        (s["body"]["item"], s.get("attempt", 0)): datetime.fromisoformat(s["at"])
        + timedelta(seconds=s["body"].get("delay", 0.0))
        for s in signals[signals.index(opened[0]) :]
        if s["body"]["kind"] == "phase_scheduled" and s["phase"] == "shell_run"
    }
    assert release and all(
        at >= cooldown_end - timedelta(microseconds=2) for at in release.values()
    )
    for s in signals:
        key = (s["body"].get("item"), s.get("attempt", 0))
        if s["body"]["kind"] == "phase_started" and s["phase"] == "shell_run" and key in release:
            assert datetime.fromisoformat(s["at"]) >= release[key] - timedelta(milliseconds=5)
    # ... and the breaker is the adapter's, across runs: the next run's first shell attempt
    # is the half-open probe (held back if the cool-down has not passed yet); its success
    # closes the breaker.
    again = sisas("run", "examples.task_execution", "--wait", "--json", env=env)
    assert again.returncode == 0, again.stderr
    signals = _signals(json.loads(again.stdout.strip().splitlines()[-1])["run_id"], env)
    closed = [s["body"]["scope"] for s in signals if s["body"]["kind"] == "circuit_closed"]
    assert closed == ["task_execution.shell_run"]


async def test_the_task_queue_reruns_deterministically_serial_and_parallel() -> None:
    run, serial, parallel = await rerun_serial_and_parallel(
        "examples.task_execution", (TASKS / "queue.json").read_bytes(), seed=2, workers=2
    )
    assert run.state.status == "completed"
    assert serial.deterministic and parallel.deterministic
    assert serial.fingerprint == parallel.fingerprint == run.state.fingerprint
