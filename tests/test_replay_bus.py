"""Replay and audit against a real nats-server: forgeries published by an outside
client, signing by the orchestrator, reruns on 1 and N workers, bundles checked with no
server, a projection that drifted from the log, and a code change found by diff."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.client.queries import ask
from sisas.loader import load_pipelines
from sisas.security.keys import generate_seed, signer_from_file
from sisas.services.host import running_services
from sisas.services.query import projection_path
from sisas.signals import PhaseCompleted, RunCancelled
from sisas.signals.codec import encode_signal
from sisas.signals.names import log_subject
from sisas.signals.signing import Signer
from tests.cli_process import server_env, sisas_async
from tests.runs import (
    EXAMPLE,
    POINTS,
    TEST_PIPES,
    append_runs,
    forged_after,
    outsider_publishes,
    start,
    wait_end,
)


async def test_signals_forged_by_an_outside_client_are_found(bus: Bus, settings: Settings) -> None:
    env = server_env(settings)
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        await start(bus, "clustering", "f1", POINTS)
        await start(bus, "clustering", "f2", POINTS, seed=3)
        _, signals = await wait_end(bus, "f1")
        await wait_end(bus, "f2")
        clean = await sisas_async("replay", "verify", "--all", env=env)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "2 of 2 runs intact" in clean.stdout
        forged = forged_after(signals, PhaseCompleted(output_digest=""), phase="report")
        subject = log_subject("clustering", "f1", "report", "phase_completed")
        seq = await outsider_publishes(settings.nats_url or "", subject, encode_signal(forged))
        junk = await outsider_publishes(
            settings.nats_url or "", log_subject("clustering", "f2", "", "run_failed"), b"{oops"
        )
        one = await sisas_async("replay", "verify", "f1", "--json", env=env)
        assert one.returncode == 1
        doc = json.loads(one.stdout)
        first = doc["first"]
        assert (first["problem"], first["stream_seq"], first["run_seq"]) == (
            "out_of_place",
            seq,
            len(signals) + 1,
        )
        assert first["kind"] == "phase_completed" and "after the run ended" in first["message"]
        every = await sisas_async("replay", "verify", "--all", "--json", env=env)
        assert every.returncode == 1
        verdicts = {v["run_id"]: v for v in json.loads(every.stdout)["verdicts"]}
        assert verdicts["f2"]["findings"][0]["problem"] == "corrupt"
        assert verdicts["f2"]["findings"][0]["stream_seq"] == junk
        text = await sisas_async("replay", "verify", "f2", env=env)
        assert text.returncode == 1 and "NOT intact" in text.stdout and "corrupt" in text.stdout


async def test_a_signing_orchestrator_lets_verify_catch_a_legal_looking_forgery(
    settings: Settings, tmp_path: Path
) -> None:
    env = server_env(settings)
    key = tmp_path / "orchestrator.seed"
    key.write_bytes(generate_seed())
    public = signer_from_file(key).public_key
    signed_settings = dataclasses.replace(settings, signing_key=key)
    async with open_bus(signed_settings) as bus:
        pipes = load_pipelines([TEST_PIPES], entry_points=False)
        async with running_services(bus, {"slow": pipes["slow"]}, projector=True):
            await start(bus, "slow", "s1", b'{"seconds": 0.01}')
            await wait_end(bus, "s1")
            await start(bus, "slow", "s2", b'{"seconds": 5}')
            while (last := await bus.log.last_of_run("s2")) is None or last.signal.kind not in (  # type: ignore[union-attr]
                "phase_started"
            ):
                await asyncio.sleep(0.02)
            records = await bus.log.read_run("s2")
            signals = [r.signal for r in records]  # type: ignore[union-attr]
            assert all(s.sig.startswith(public) for s in signals)
            cancel = forged_after(signals, RunCancelled(reason="looks legal"))
            subject = log_subject("slow", "s2", "", "run_cancelled")
            await outsider_publishes(settings.nats_url or "", subject, encode_signal(cancel))
            await wait_end(bus, "s2")
    intact = await sisas_async("replay", "verify", "s1", "--trust", public, env=env)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "signed by" in intact.stdout
    forged = await sisas_async("replay", "verify", "s2", "--trust", public, "--json", env=env)
    assert forged.returncode == 1
    first = json.loads(forged.stdout)["first"]
    assert first["problem"] == "unsigned" and first["kind"] == "run_cancelled"
    untrusted = await sisas_async(
        "replay", "verify", "s1", "--trust", Signer(generate_seed()).public_key, env=env
    )
    assert untrusted.returncode == 1 and "untrusted_signer" in untrusted.stdout


async def test_rerun_on_one_and_on_three_workers_certifies_parallel_equals_serial(
    bus: Bus, settings: Settings
) -> None:
    env = server_env(settings)
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    async with running_services(bus, pipes, concurrency=3, projector=True):
        await start(bus, "clustering", "r1", POINTS, **{"clean.flaky": True})
        state, _ = await wait_end(bus, "r1")
    assert state.status == "completed"
    results = []
    for workers in ("1", "3"):
        out = await sisas_async(
            "replay", "rerun", "r1", "--pipelines", EXAMPLE, "--workers", workers, "--json", env=env
        )
        assert out.returncode == 0, out.stderr
        results.append(json.loads(out.stdout))
    serial, parallel = results
    assert serial["deterministic"] and parallel["deterministic"]
    assert serial["fingerprint"] == parallel["fingerprint"] == state.fingerprint
    assert parallel["workers"] == 3
    assert sum(p["phase"] == "score" for p in parallel["phases"]) == state.phase("score").items
    retried = [p for p in serial["phases"] if p["phase"] == "clean"]
    assert retried[0]["attempt"] == 1  # the attempt that decided the phase, after its retry
    text = await sisas_async("replay", "rerun", "r1", "--pipelines", EXAMPLE, env=env)
    assert text.returncode == 0 and "deterministic" in text.stdout
    unloaded = await sisas_async("replay", "rerun", "r1", env=env)
    assert unloaded.returncode == 2 and "--pipelines" in unloaded.stderr


async def test_an_audit_bundle_is_verified_on_a_machine_with_no_server(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    env = server_env(settings)
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        await start(bus, "clustering", "a1", POINTS)
        _, signals = await wait_end(bus, "a1")
    out = tmp_path / "bundle"
    exported = await sisas_async(
        "audit", "a1", "--out", str(out), "--rerun", "--pipelines", EXAMPLE, env=env
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    lines = [json.loads(x) for x in (out / "signals.jsonl").read_bytes().splitlines()]
    assert len(lines) == len(signals)
    # each line names the message it is stored in: the run's commits, and its place there
    assert {x["subject"] for x in lines} == {"sisas.run.clustering.a1.c"}
    assert any(x.get("index", 0) > 0 for x in lines)
    assert [x["signal"]["seq"] for x in lines] == [s.seq for s in signals]
    html = (out / "report.html").read_text()
    for part in ("INTACT", "Timeline", "Contracts and invariants", "INV-7.1", signals[-1].hash):
        assert part in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    _well_formed(html)
    claims = json.loads((out / "verdict.json").read_bytes())
    assert claims["verify"]["intact"] and claims["rerun"]["deterministic"]
    assert len(list((out / "artifacts").iterdir())) > 3
    # The auditor's machine: nothing listens, no data folder; the check must not need one.
    nowhere = Settings(home=tmp_path / "none", nats_url="nats://127.0.0.1:9", replicas=1)
    no_server = server_env(nowhere)
    offline = await sisas_async(
        "audit", "verify", str(out), "--rerun", "--pipelines", EXAMPLE, "--json", env=no_server
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    doc = json.loads(offline.stdout)
    assert doc["bundle"]["intact"] and doc["rerun"]["deterministic"]
    assert not (tmp_path / "none").exists()
    (out / "manifest.json").write_text(
        (out / "manifest.json").read_text().replace('"seed":7', '"seed":8')
    )
    tampered = await sisas_async("audit", "verify", str(out), env=no_server)
    assert tampered.returncode == 1
    assert "manifest.json changed since the bundle was exported" in tampered.stdout
    not_a_bundle = await sisas_async("audit", "verify", str(tmp_path), env=no_server)
    assert not_a_bundle.returncode == 2 and "index.json" in not_a_bundle.stderr


def _well_formed(html: str) -> None:
    """Every element the report opens is closed, in order (void elements aside)."""
    from html.parser import HTMLParser

    void = {"meta", "br", "img", "hr", "input", "link"}
    stack: list[str] = []

    class Check(HTMLParser):
        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag not in void:
                stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            assert stack and stack[-1] == tag, (tag, stack[-5:])
            stack.pop()

    Check().feed(html)
    assert stack == []


async def test_a_projection_that_drifted_from_the_log_is_named_field_by_field(
    bus: Bus, settings: Settings
) -> None:
    env = server_env(settings)
    await append_runs(bus, 5)
    await ask(bus, "status")  # nothing serves: the CLI-side projector folds the log here
    first = await sisas_async("replay", "verify", "--all", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "5 of 5 runs intact" in first.stdout
    con = duckdb.connect(str(projection_path(settings)))
    state = json.loads(
        bytes(
            con.execute("SELECT state FROM run_states WHERE run_id = 'run-0000002'").fetchone()[0]
        )
    )  # type: ignore[index]
    state["seed"] = 999
    con.execute(
        "UPDATE run_states SET state = ? WHERE run_id = 'run-0000002'",
        [msgspec.json.encode(state)],
    )
    con.close()
    drifted = await sisas_async("replay", "verify", "--all", "--json", env=env)
    assert drifted.returncode == 1
    bad = [v for v in json.loads(drifted.stdout)["verdicts"] if not v["intact"]]
    assert [v["run_id"] for v in bad] == ["run-0000002"]
    assert bad[0]["projection"] == "differs"
    assert bad[0]["projection_diff"][0] == {"path": "seed", "recorded": 999, "new": 2}
    skip = await sisas_async("replay", "verify", "--all", "--no-projection", env=env)
    assert skip.returncode == 0


async def test_replay_diff_lists_the_phases_a_code_change_would_change(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    env = server_env(settings)
    pipes = load_pipelines([EXAMPLE], entry_points=False)
    async with running_services(bus, pipes, concurrency=2, projector=True):
        for i in range(2):
            await start(bus, "clustering", f"d{i}", POINTS, seed=i)
        for i in range(2):
            await wait_end(bus, f"d{i}")
        same = await sisas_async(
            "replay", "diff", "-p", "clustering", "--pipelines", EXAMPLE, env=env
        )
        assert same.returncode == 0, same.stdout + same.stderr
        assert "0 of 2 runs" in same.stdout
        changed_code = tmp_path / "clustering_v2.py"
        changed_code.write_text(
            Path(EXAMPLE)
            .read_text()
            .replace("round(math.log1p(item), 12)", "round(math.log1p(item) * 1.01, 12)")
        )
        changed = await sisas_async(
            "replay",
            "diff",
            "-p",
            "clustering",
            "--pipelines",
            str(changed_code),
            "--json",
            env=env,
        )
    assert changed.returncode == 1, changed.stderr
    doc = json.loads(changed.stdout)
    assert doc["runs"] == 2 and doc["changed_runs"] == 2
    for v in doc["verdicts"]:
        assert v["first_divergence"]["phase"] == "score"
        assert {c.split("[")[0] for c in v["changed"]} == {"score"}
