"""Whether replay and audit verdicts can be trusted, against a real nats-server: a rerun
never repeats a side effect unless asked, and a missing or damaged artifact (in the
server's store, changed by a raw client as a tamperer would, or in a bundle's
artifacts/ folder) is named and never passed over as intact or deterministic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nats

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.handlers.state import fold
from sisas.loader import load_pipelines
from sisas.services.host import running_services
from sisas.signals import Signal
from sisas.signals.kinds import PhaseCompleted, RunRequested
from sisas.signals.names import ARTIFACT_BUCKET, BLOB_BUCKET
from tests.cli_process import server_env, sisas_async
from tests.runs import ROOT, start, wait_end

SIDE = str(ROOT / "tests" / "side_effects_pipeline.py")
HELD = "side effects (recorded output reused; --include-side-effects runs it)"


def posts(outbox: Path) -> int:
    """How many times ``publish`` posted: lines in its outbox."""
    return len(outbox.read_text().splitlines()) if outbox.exists() else 0


async def posted(bus: Bus, run_id: str, outbox: Path, padding: int = 0) -> list[Signal]:
    """Run the posting pipeline with publish enabled (services must be running): it posts
    once. ``padding`` makes the input that many bytes larger (the object store past
    512 KiB)."""
    data = json.dumps({"outbox": str(outbox), "padding": "x" * padding}).encode()
    await start(bus, "posting", run_id, data, **{"publish.enabled": True})
    state, signals = await wait_end(bus, run_id)
    assert state.status == "completed", state.error
    assert posts(outbox) == 1
    return signals


def output_of(signals: list[Signal], phase: str) -> str:
    """The bytes digest of ``phase``'s stored output."""
    [done] = [s.body for s in signals if s.phase == phase and isinstance(s.body, PhaseCompleted)]
    assert isinstance(done, PhaseCompleted)
    return done.artifact


def input_of(signals: list[Signal]) -> str:
    body = signals[0].body
    assert isinstance(body, RunRequested)
    return body.input_digest


def flipped(data: bytes) -> bytes:
    """``data`` with one bit of its middle byte changed."""
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


async def tamper(url: str, *, damage_small: str, damage_large: str, delete_small: str) -> None:
    """Change stored artifacts as any client allowed to write the buckets could: one byte
    of a small artifact (KV) and of a large one (object store), and remove another."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.key_value(BLOB_BUCKET)
        entry = await kv.get(damage_small.removeprefix("sha256:"))
        await kv.put(damage_small.removeprefix("sha256:"), flipped(entry.value or b""))
        await kv.delete(delete_small.removeprefix("sha256:"))
        store = await js.object_store(ARTIFACT_BUCKET)
        name = damage_large.replace(":", "-")
        large = await store.get(name)
        await store.put(name, flipped(large.data or b""))
    finally:
        await nc.close()


def problems_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["digest"]: p for p in doc["artifact_problems"]}


async def test_rerun_diff_and_audit_reuse_a_side_effect_instead_of_repeating_it(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.txt"
    pipes = load_pipelines([SIDE], entry_points=False)
    async with running_services(bus, pipes, projector=True):
        fingerprint = fold(await posted(bus, "p1", outbox)).fingerprint

        rerun = await sisas_async(
            "replay", "rerun", "p1", "--pipelines", SIDE, "--json", env=server_env(settings)
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        doc = json.loads(rerun.stdout)
        assert doc["not_rerun"] == {"publish": HELD}
        assert [p["phase"] for p in doc["phases"]] == ["compose", "receipt"]
        assert doc["deterministic"] and doc["evidence_complete"]
        assert doc["fingerprint"] == doc["recorded_fingerprint"] == fingerprint
        assert doc["side_effects_rerun"] == []
        text = await sisas_async(
            "replay", "rerun", "p1", "--pipelines", SIDE, env=server_env(settings)
        )
        assert text.returncode == 0
        assert f"not rerun: publish: {HELD}" in text.stdout
        assert posts(outbox) == 1

        diff = await sisas_async(
            "replay", "diff", "-p", "posting", "--pipelines", SIDE, env=server_env(settings)
        )
        assert diff.returncode == 0, diff.stdout + diff.stderr
        assert "0 of 1 runs" in diff.stdout and HELD in diff.stdout
        assert posts(outbox) == 1

        out = tmp_path / "bundle"
        exported = await sisas_async(
            "audit",
            "p1",
            "--out",
            str(out),
            "--rerun",
            "--pipelines",
            SIDE,
            env=server_env(settings),
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert f"not rerun: publish: {HELD}" in exported.stdout
        assert json.loads((out / "verdict.json").read_bytes())["rerun"]["not_rerun"] == {
            "publish": HELD
        }
        assert posts(outbox) == 1

    offline = await sisas_async(
        "audit",
        "verify",
        str(out),
        "--rerun",
        "--pipelines",
        SIDE,
        "--json",
        env=server_env(settings),
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert json.loads(offline.stdout)["rerun"]["not_rerun"] == {"publish": HELD}
    assert posts(outbox) == 1


async def test_include_side_effects_executes_them_again_and_says_so(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.txt"
    pipes = load_pipelines([SIDE], entry_points=False)
    flag = "--include-side-effects"
    async with running_services(bus, pipes, projector=True):
        await posted(bus, "p2", outbox)

        rerun = await sisas_async(
            "replay", "rerun", "p2", "--pipelines", SIDE, flag, env=server_env(settings)
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "side effects executed again (--include-side-effects): publish" in (rerun.stdout)
        assert posts(outbox) == 2

        diff = await sisas_async(
            "replay",
            "diff",
            "-p",
            "posting",
            "--pipelines",
            SIDE,
            flag,
            "--json",
            env=server_env(settings),
        )
        assert diff.returncode == 0, diff.stdout + diff.stderr
        [verdict] = json.loads(diff.stdout)["verdicts"]
        assert verdict["side_effects_rerun"] == ["publish"] and verdict["not_rerun"] == {}
        assert posts(outbox) == 3

        out = tmp_path / "bundle"
        exported = await sisas_async(
            "audit",
            "p2",
            "--out",
            str(out),
            "--rerun",
            "--pipelines",
            SIDE,
            flag,
            env=server_env(settings),
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        assert "side effects executed again" in exported.stdout
        assert posts(outbox) == 4
        alone = await sisas_async(
            "audit", "p2", "--out", str(tmp_path / "b2"), flag, env=server_env(settings)
        )
        assert alone.returncode == 2 and "--rerun" in alone.stderr

    offline = await sisas_async(
        "audit",
        "verify",
        str(out),
        "--rerun",
        "--pipelines",
        SIDE,
        flag,
        "--json",
        env=server_env(settings),
    )
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert json.loads(offline.stdout)["rerun"]["side_effects_rerun"] == ["publish"]
    assert posts(outbox) == 5


async def test_a_damaged_or_missing_artifact_in_the_store_fails_rerun_and_audit_naming_it(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.txt"
    pipes = load_pipelines([SIDE], entry_points=False)
    async with running_services(bus, pipes, projector=True):
        signals = await posted(bus, "d1", outbox, padding=600 * 1024)
        run_input, composed, receipt = (
            input_of(signals),
            output_of(signals, "compose"),
            output_of(signals, "receipt"),
        )
        await tamper(
            settings.nats_url or "",
            damage_small=composed,
            damage_large=run_input,
            delete_small=receipt,
        )

        rerun = await sisas_async(
            "replay", "rerun", "d1", "--pipelines", SIDE, "--json", env=server_env(settings)
        )
        assert rerun.returncode == 1, rerun.stdout + rerun.stderr
        doc = json.loads(rerun.stdout)
        assert not doc["deterministic"] and not doc["evidence_complete"]
        problems = problems_of(doc)
        assert {d: p["problem"] for d, p in problems.items()} == {
            run_input: "damaged",
            composed: "damaged",
            receipt: "missing",
        }
        assert problems[run_input]["used_as"] == ["run input", "input of compose"]
        assert problems[composed]["used_as"][0] == "output of compose"
        assert problems[receipt]["used_as"] == ["output of receipt"]
        assert run_input in doc["not_rerun"]["compose"]
        assert composed in doc["not_rerun"]["receipt"]
        assert doc["fingerprint"] != doc["recorded_fingerprint"]
        text = await sisas_async(
            "replay", "rerun", "d1", "--pipelines", SIDE, env=server_env(settings)
        )
        shown = text.stdout
        assert text.returncode == 1
        assert "evidence INCOMPLETE: NOT shown deterministic" in shown
        assert f"{composed} damaged: output of compose" in shown
        assert f"{receipt} missing: output of receipt" in shown

        out = tmp_path / "bundle"
        exported = await sisas_async("audit", "d1", "--out", str(out), env=server_env(settings))
        said = exported.stdout
        assert exported.returncode == 1, said + exported.stderr
        assert "(log intact)" in said and "(evidence INCOMPLETE)" in said
        for digest in (run_input, composed, receipt):
            assert digest in said
        as_json = await sisas_async(
            "audit", "d1", "--out", str(tmp_path / "j"), "--json", env=server_env(settings)
        )
        doc = json.loads(as_json.stdout)
        assert as_json.returncode == 1 and not doc["ok"]
        assert doc["intact"] and not doc["evidence_complete"]
        assert set(problems_of(doc)) == {run_input, composed, receipt}

    html = (out / "report.html").read_text()
    assert "LOG INTACT" in html and "EVIDENCE INCOMPLETE" in html and composed in html
    offline = await sisas_async("audit", "verify", str(out), env=server_env(settings))
    said = offline.stdout
    assert offline.returncode == 1
    assert "log intact, evidence INCOMPLETE" in said
    assert f"{composed} damaged: output of compose" in said
    assert f"{receipt} missing: output of receipt" in said


async def test_a_damaged_or_missing_artifact_in_a_bundle_fails_audit_verify_naming_it(
    bus: Bus, settings: Settings, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.txt"
    pipes = load_pipelines([SIDE], entry_points=False)
    async with running_services(bus, pipes, projector=True):
        signals = await posted(bus, "b1", outbox)
        clean = tmp_path / "clean"
        exported = await sisas_async("audit", "b1", "--out", str(clean), env=server_env(settings))
        assert exported.returncode == 0, exported.stdout + exported.stderr
    composed, receipt = output_of(signals, "compose"), output_of(signals, "receipt")

    # A tamperer who removes an output and every trace of it from the index.
    missing = tmp_path / "missing"
    shutil.copytree(clean, missing)
    (missing / "artifacts" / receipt.removeprefix("sha256:")).unlink()
    index = json.loads((missing / "index.json").read_bytes())
    del index["artifacts"][receipt]
    del index["files"]["artifacts/" + receipt.removeprefix("sha256:")]
    (missing / "index.json").write_text(json.dumps(index))
    checked = await sisas_async("audit", "verify", str(missing), env=server_env(settings))
    said = checked.stdout
    assert checked.returncode == 1, said
    assert "log intact, evidence INCOMPLETE" in said
    assert f"{receipt} missing: output of receipt" in said
    assert "(log intact, evidence complete)" in (
        (await sisas_async("audit", "verify", str(clean), env=server_env(settings))).stdout
    )

    damaged = tmp_path / "damaged"
    shutil.copytree(clean, damaged)
    victim = damaged / "artifacts" / composed.removeprefix("sha256:")
    victim.write_bytes(flipped(victim.read_bytes()))
    checked = await sisas_async("audit", "verify", str(damaged), "--json", env=server_env(settings))
    assert checked.returncode == 1
    bundle = json.loads(checked.stdout)["bundle"]
    assert bundle["log_intact"] and not bundle["evidence_complete"] and not bundle["intact"]
    [problem] = bundle["artifact_problems"]
    assert (problem["digest"], problem["problem"]) == (composed, "damaged")
    assert problem["used_as"][0] == "output of compose"
    rerun = await sisas_async(
        "audit",
        "verify",
        str(damaged),
        "--rerun",
        "--pipelines",
        SIDE,
        "--json",
        env=server_env(settings),
    )
    assert rerun.returncode == 1
    verdict = json.loads(rerun.stdout)["rerun"]
    assert not verdict["deterministic"] and not verdict["evidence_complete"]
    assert [p["digest"] for p in verdict["artifact_problems"]] == [composed]
    assert composed in verdict["not_rerun"]["receipt"]
