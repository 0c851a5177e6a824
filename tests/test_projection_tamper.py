"""The projection never shows forged history as real.

A signal `sisas replay verify` flags (out of place, a broken link, a signer change…) is
not folded into what the projection shows of its run; the run is marked tampered, with
the stream sequence and the problem of its first flagged signal, in `sisas runs`, `show`,
`stats`, the dashboard and every ``--json`` output. Forgeries are published into a real
nats-server by an outside client, as anyone with publish rights could; the golden logs
pin that the projection flags exactly what verify flags.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from bench.synthetic import synthetic_runs
from sisas.audit.bundle import read_records
from sisas.bus.memory_log import MemoryLog
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.dashboard.app import create_app
from sisas.dashboard.hub import Hub
from sisas.loader import load_pipelines
from sisas.projections import queries as q
from sisas.projections.projector import Projector
from sisas.projections.schema import SCHEMA_VERSION
from sisas.projections.store import ProjectionStore
from sisas.replay.verify import LogVerifier, report
from sisas.services.host import running_services
from sisas.signals import PhaseCompleted, RunCancelled, StoredSignal
from sisas.signals.codec import encode_signal
from sisas.signals.names import log_subject
from tests.browser import free_port as _free_port
from tests.browser import page_wait as _wait
from tests.cli_process import SISAS, server_env, sisas_async
from tests.golden import make
from tests.runs import ROOT, TEST_PIPES, forged_after, outsider_publishes, start, wait_end

GOLDEN = Path(__file__).parent / "golden"
NAP = b'{"seconds": 0.01}'


def slow() -> dict[str, Any]:
    return {"slow": load_pipelines([TEST_PIPES], entry_points=False)["slow"]}


async def cli_json(settings: Settings, *args: str) -> tuple[int, Any]:
    done = await sisas_async(*args, "--json", env=server_env(settings))
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


async def dashboard_json(bus: Bus, path: str) -> Any:
    """The dashboard's JSON API, through its ASGI app."""
    transport = httpx.ASGITransport(app=create_app(bus, Hub()))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        answer = await client.get(path)
    assert answer.status_code == 200, answer.text
    return answer.json()


def tamper_of(run: dict[str, Any]) -> tuple[Any, ...]:
    return (run["tampered"], run["tampered_stream_seq"], run["tampered_problem"])


async def verify_first(settings: Settings, run_id: str) -> tuple[int, str, str]:
    """Verify's first finding in ``run_id`` (stream seq, problem) and how the projection's
    stored fold compares with its refold."""
    code, doc = await cli_json(settings, "replay", "verify", run_id)
    assert code == 1
    first = doc["first"]
    return first["stream_seq"], first["problem"], doc["verdicts"][0]["projection"]


async def test_a_cancel_forged_after_the_end_leaves_the_run_completed_and_marked_tampered(
    bus: Bus, settings: Settings
) -> None:
    """The auditor's case: an outsider appends a correctly chained run_cancelled after
    run_completed, straight into the stream."""
    async with running_services(bus, slow(), projector=True):
        await start(bus, "slow", "clean", NAP)
        await start(bus, "slow", "forged", NAP)
        await wait_end(bus, "clean")
        _, signals = await wait_end(bus, "forged")
        cancel = forged_after(signals, RunCancelled(reason="forged", requested_by="mallory"))
        subject = log_subject("slow", "forged", "", "run_cancelled")
        seq = await outsider_publishes(settings.nats_url or "", subject, encode_signal(cancel))
        # the stored fold is still the orchestrator's, the one verify refolds
        assert await verify_first(settings, "forged") == (seq, "out_of_place", "equal")

        _, listed = await cli_json(settings, "runs")
        runs = {r["run_id"]: r for r in listed["runs"]}
        assert runs["forged"]["status"] == "completed"
        assert tamper_of(runs["forged"]) == (True, seq, "out_of_place")
        assert "run_cancelled after the run ended (completed)" in runs["forged"]["tampered_message"]
        assert tamper_of(runs["clean"]) == (False, None, None)
        assert runs["clean"]["tampered_message"] is None

        code, shown = await cli_json(settings, "show", "forged")
        assert code == 1  # not a run to build on
        assert shown["run"]["status"] == "completed"
        assert tamper_of(shown["run"]) == (True, seq, "out_of_place")
        assert [p["status"] for p in shown["phases"]] == ["completed", "completed"]
        code, _ = await cli_json(settings, "show", "clean")
        assert code == 0

        text = await sisas_async("show", "forged", env=server_env(settings, COLUMNS="200"))
        out = text.stdout
        assert f"stream seq {seq}" in out and "out_of_place" in out, out
        assert "sisas replay verify forged" in out
        listing = (await sisas_async("runs", env=server_env(settings, COLUMNS="200"))).stdout
        rows = {line.split()[0]: line for line in listing.splitlines() if line.strip()}
        assert "completed TAMPERED" in rows["forged"], listing
        assert "TAMPERED" not in rows["clean"], listing
        assert "sisas show forged" in listing  # under the table: how to see why

        _, stats = await cli_json(settings, "stats")
        (pipeline,) = stats["pipelines"]
        assert (pipeline["runs"], pipeline["completed"], pipeline["cancelled"]) == (2, 1, 0)
        assert pipeline["tampered"] == 1

        api = await dashboard_json(bus, "/api/runs")
        by_id = {r["run_id"]: r for r in api["runs"]}
        assert tamper_of(by_id["forged"]) == (True, seq, "out_of_place")
        page = await dashboard_json(bus, "/api/runs/forged")
        assert page["status"] == "completed"
        assert page["tampered"]["stream_seq"] == seq
        assert page["tampered"]["problem"] == "out_of_place"
        assert page["signals"] == len(signals) + 1
        assert (await dashboard_json(bus, "/api/runs/clean"))["tampered"] is None

        code, rebuilt = await cli_json(settings, "projections", "rebuild")
        assert code == 0 and rebuilt["equal"] is True
    # With no projector running, the CLI folds the log into the same file itself.
    _, shown = await cli_json(settings, "show", "forged")
    assert tamper_of(shown["run"]) == (True, seq, "out_of_place")
    code, manifest = await cli_json(settings, "manifest", "forged")
    assert manifest["status"] == "completed"
    assert manifest["tampered"] == {
        "stream_seq": seq,
        "problem": "out_of_place",
        "message": runs["forged"]["tampered_message"],
    }


async def test_a_phase_completion_forged_mid_run_is_not_shown(bus: Bus, settings: Settings) -> None:
    """A phase_completed for a phase never scheduled, appended while the run is going:
    the orchestrator folds it (and skips the phase), the projection does not show it."""
    async with running_services(bus, slow()):  # no projector: the CLI folds the log itself
        await start(bus, "slow", "mid", b'{"seconds": 2}')
        deadline = time.monotonic() + 30
        while True:
            last = await bus.log.last_of_run("mid")
            if isinstance(last, StoredSignal) and last.signal.kind == "phase_started":
                break
            assert time.monotonic() < deadline, "nap never started"
            await asyncio.sleep(0.02)
        records = await bus.log.read_run("mid")
        before = [r.signal for r in records if isinstance(r, StoredSignal)]
        forged = forged_after(before, PhaseCompleted(output_digest=""), phase="after")
        subject = log_subject("slow", "mid", "after", "phase_completed")
        seq = await outsider_publishes(settings.nats_url or "", subject, encode_signal(forged))
        state, _ = await wait_end(bus, "mid")
    assert state.status == "completed" and state.phase("after").status == "completed"
    assert (await verify_first(settings, "mid"))[:2] == (seq, "out_of_place")

    _, listed = await cli_json(settings, "runs")
    (run,) = listed["runs"]
    assert run["status"] == "completed"
    assert tamper_of(run) == (True, seq, "out_of_place")
    assert "phase_completed for after, which was never scheduled" in run["tampered_message"]
    code, shown = await cli_json(settings, "show", "mid")
    assert code == 1
    assert {p["name"]: p["status"] for p in shown["phases"]} == {
        "nap": "completed",
        "after": "pending",  # it never ran: only the forgery says it completed
    }
    _, stats = await cli_json(settings, "stats")
    assert (stats["pipelines"][0]["completed"], stats["pipelines"][0]["tampered"]) == (0, 1)
    page = await dashboard_json(bus, "/api/runs/mid")
    assert page["status"] == "completed"
    assert {p["name"]: p["status"] for p in page["phases"]} == {
        "nap": "completed",
        "after": "pending",
    }
    assert page["tampered"]["stream_seq"] == seq
    assert all(lane["phase"] != "after" for lane in page["timeline"]["lanes"])
    code, rebuilt = await cli_json(settings, "projections", "rebuild")
    assert code == 0 and rebuilt["equal"] is True
    assert await bus.log.last_seq() == rebuilt["stream_seq"]


class _Line(msgspec.Struct, frozen=True):
    stream_seq: int
    subject: str
    signal: msgspec.Raw


def golden_log(name: str) -> MemoryLog:
    """A golden log, byte for byte, in the in-memory log (stream seqs as in the file)."""
    log = MemoryLog()
    for raw in (GOLDEN / name).read_bytes().splitlines():
        line = msgspec.json.decode(raw, type=_Line)
        assert log.inject_raw(line.subject, bytes(line.signal)) == line.stream_seq
    return log


GOLDEN_LOGS = [
    "intact.jsonl",
    "changed_byte.jsonl",
    "removed.jsonl",
    "reordered.jsonl",
    "forged_append.jsonl",
    "signed.jsonl",
    "signed_forged.jsonl",
]


@pytest.mark.parametrize("name", GOLDEN_LOGS)
async def test_the_projection_flags_what_verify_flags_in_each_golden_log(name: str) -> None:
    verdict = report(LogVerifier().extend(read_records(GOLDEN / name))).verdicts[0]
    first = verdict.findings[0] if verdict.findings else None
    log = golden_log(name)
    seen = set()
    for batch_size, cache_runs in ((5_000, 10_000), (1, 1), (7, 1)):
        store = ProjectionStore(None)
        # a cache of one run: each run is read back from run_states at its next signal
        projector = Projector(
            log, store, identity="mem", batch_size=batch_size, cache_runs=cache_runs
        )
        await projector.catch_up()
        (run,) = q.runs(store.con, q.RunsQuery())
        assert tamper_of(run) == (
            (True, first.stream_seq, first.problem) if first else (False, None, None)
        )
        if first is not None:
            assert run["tampered_message"] == first.message
        seen.add((store.digest(), json.dumps(run)))
        store.close()
    assert len(seen) == 1  # whatever the batches and the cache


@pytest.mark.parametrize("copy", [True, False], ids=["duplicate", "fork"])
async def test_a_signal_stored_again_behind_the_head_is_named_as_verify_names_it(
    copy: bool,
) -> None:
    """An old signal stored again (a duplicate) or a different one claiming its seq (a
    fork): which it is needs the earlier signal's hash, from the batch being folded, the
    one being written or the store, whatever the batch boundaries."""
    signals = make.intact_run()
    again = (
        signals[4]
        if copy
        else make.forge_after(signals[:4], RunCancelled(reason="forged", requested_by="mallory"))
    )
    log = MemoryLog()
    await log.append(signals, expected_last_seq=0)
    subject = log_subject(again.pipeline, again.run_id, again.phase, again.kind)
    seq = log.inject_raw(subject, encode_signal(again))
    for signals in synthetic_runs(2):  # the projector goes on after the lookup
        await log.append(signals, expected_last_seq=0)
    verdict = report(LogVerifier().extend(await log.read_run("golden-1"))).verdicts[0]
    first = verdict.findings[0]
    assert (first.stream_seq, first.problem) == (seq, "duplicate" if copy else "fork")
    for batch_size in (5_000, 1, 7):
        store = ProjectionStore(None)
        await Projector(log, store, identity="mem", batch_size=batch_size).catch_up()
        runs = {r["run_id"]: r for r in q.runs(store.con, q.RunsQuery())}
        assert len(runs) == 3 and not any(runs[r]["tampered"] for r in runs if r != "golden-1")
        run = runs["golden-1"]
        assert tamper_of(run) == (True, seq, first.problem), batch_size
        assert run["tampered_message"] == first.message
        assert run["status"] == "completed"
        store.close()


async def test_a_forged_cancel_is_not_folded_and_verify_still_finds_the_stored_fold_equal() -> None:
    signals = make.intact_run()
    cancel = make.forge_after(signals, RunCancelled(reason="forged", requested_by="mallory"))
    log = MemoryLog()
    await log.append(signals, expected_last_seq=0)
    seq = log.inject_raw(
        log_subject("clustering", "golden-1", "", "run_cancelled"), encode_signal(cancel)
    )
    store = ProjectionStore(None)
    await Projector(log, store, identity="mem").catch_up()
    (run,) = q.runs(store.con, q.RunsQuery())
    assert run["status"] == "completed" and tamper_of(run) == (True, seq, "out_of_place")
    assert q.runs(store.con, q.RunsQuery(status="cancelled")) == []
    # the stored fold is the orchestrator's (every chained signal): what verify refolds
    verdict = report(LogVerifier().extend(await log.read_run("golden-1"))).verdicts[0]
    (state,) = q.states(store.con, q.StatesQuery(run_ids=["golden-1"]))["states"]
    assert state["digest"] == verdict.state_digest
    store.close()


async def test_a_projection_file_of_the_previous_schema_is_rebuilt_not_misread(
    tmp_path: Path,
) -> None:
    signals = make.intact_run()
    cancel = make.forge_after(signals, RunCancelled(reason="forged", requested_by="mallory"))
    log = MemoryLog()
    await log.append(signals, expected_last_seq=0)
    log.inject_raw(
        log_subject("clustering", "golden-1", "", "run_cancelled"), encode_signal(cancel)
    )
    path = tmp_path / "projection.duckdb"
    store = ProjectionStore(path)
    await Projector(log, store, identity="mem").catch_up()
    # Turn the file into what the previous schema left: no tamper columns, the forged
    # cancel folded, the checkpoint at the log's end (nothing left to fold).
    con = store.con
    for column in ("tampered", "tampered_stream_seq", "tampered_problem", "tampered_message"):
        con.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    con.execute("ALTER TABLE run_states DROP COLUMN screen")
    con.execute("UPDATE runs SET status = 'cancelled'")
    con.execute(f"UPDATE meta SET value = '{SCHEMA_VERSION - 1}' WHERE key = 'schema_version'")
    store.close()

    store = ProjectionStore(path)
    await Projector(log, store, identity="mem").catch_up()
    (run,) = q.runs(store.con, q.RunsQuery())
    assert run["status"] == "completed" and run["tampered"] is True
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    store.close()


async def test_the_dashboard_page_warns_of_a_tampered_run(
    bus: Bus,
    settings: Settings,
    browser: webdriver.Chrome,
) -> None:
    async with running_services(bus, slow()):
        await start(bus, "slow", "shown", NAP)
        _, signals = await wait_end(bus, "shown")
    cancel = forged_after(signals, RunCancelled(reason="forged", requested_by="mallory"))
    subject = log_subject("slow", "shown", "", "run_cancelled")
    seq = await outsider_publishes(settings.nats_url or "", subject, encode_signal(cancel))
    port = _free_port()
    env = server_env(settings)
    proc = subprocess.Popen(
        [*SISAS, "dashboard", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=1) as http:
            while True:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the dashboard did not come up in 60 s"
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
        browser.get(url)
        row = 'tr[data-run-id="shown"][data-tampered="true"]'
        _wait(browser, "row").until(lambda d: d.find_element(By.CSS_SELECTOR, row))
        assert "tampered" in browser.find_element(By.CSS_SELECTOR, row).text.lower()
        browser.get(f"{url}/runs/shown")
        _wait(browser, "warning").until(
            lambda d: d.find_element(By.ID, "run-tampered").is_displayed()
        )
        warning = browser.find_element(By.ID, "run-tampered").text
        assert f"stream seq {seq}" in warning and "out_of_place" in warning, warning
        assert "sisas replay verify shown" in warning
        assert browser.find_element(By.ID, "run-status").text == "completed"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
