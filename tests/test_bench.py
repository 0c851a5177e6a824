"""`python -m bench all` end to end at its smallest sizes: every section runs against a
real nats-server and DuckDB, the table is printed, latest.json and the plot are written;
a peer that cannot be installed is reported with the reason instead of failing the bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_bench_all_quick_writes_table_json_and_plot(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SISAS_BENCH_PEERS_DIR": str(tmp_path / "peers"),
        # No index: the peer's install fails, and the bench must say so and go on.
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "",
    }
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "all", "--quick", "--peers", "dagster"]
    res = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=580
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "sisas benchmarks" in res.stdout
    assert "dagster: skipped (pip install failed" in res.stderr

    doc = json.loads((out / "latest.json").read_text())
    expected = {"overhead", "workers", "peers", "fanout", "append", "projection", "replay"}
    expected |= {"scale"}
    expected |= {"fold", "writepath", "views"}
    assert set(doc["results"]) == expected  # every section ran
    assert doc["errors"] == {}
    assert doc["machine"]["cores"] == os.cpu_count()
    assert doc["machine"]["nats_server"].startswith("nats-server")
    sections = {r["section"] for r in doc["rows"]}
    assert sections == expected  # and each gave rows
    [peer] = [r for r in doc["rows"] if r["section"] == "peers"]
    assert peer["note"].startswith("skipped: pip install failed")
    # The fan-out: sisas measured, the peer that could not be installed said so.
    fan = [r for r in doc["rows"] if r["section"] == "fanout"]
    assert fan[0]["measure"] == "sisas: 20 items and a join, run p50"
    assert fan[-1]["note"].startswith("skipped: pip install failed")
    for row in doc["rows"]:
        if not row["note"].startswith("skipped"):
            assert row["value"] > 0, row
        if row["aim"] is not None:
            assert row["met"] == (row["ratio"] >= row["aim"]), row
    # Measured, not invented: the ratios follow from the figures in the same file.
    chain = doc["results"]["overhead"]["always"]
    [per_phase] = [r for r in doc["rows"] if r["measure"] == "7-phase chain, per phase"]
    assert per_phase["ratio"] == pytest.approx(chain["raw_ack_ms"] / chain["chain_per_phase_ms"])
    levels = doc["results"]["scale"]
    assert [lv["runs_in_log"] for lv in levels] == sorted(lv["runs_in_log"] for lv in levels)
    assert levels[-1]["runs_in_log"] >= 100
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "latest.md").read_text()
    assert table.count("\n| ") == len(doc["rows"]) + 1  # header + one line per row


def test_bench_rejects_unknown_sections_and_benchmarks() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--only", "nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "unknown section" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "bench", "nonsense"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "unknown benchmark 'nonsense'" in res.stderr


@pytest.mark.timeout(300)
def test_bench_pages_times_a_run_with_pages_open_and_none_and_counts_their_loads() -> None:
    cmd = [sys.executable, "-m", "bench", "pages", "--items", "60", "--pages", "2"]
    cmd += ["--rounds", "1", "--idle", "1", "--json"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["pages"] for r in out["runs"]] == [0, 2]
    none, some = out["runs"]
    assert none["status"] == some["status"] == "failed"  # wide fails at INV-TOTAL, by design
    assert none["chromium_cpu"] == [] and len(some["chromium_cpu"]) == 2
    assert all(n >= 1 for n in some["page_loads"]), some  # each page loaded the run
    assert all(b > 1000 for b in some["page_bytes"]), some
    assert some["health"]["indexes_built"] >= 1  # the pages' run was indexed
    assert some["cpu"]["up"] > 0 and out["ratio"] > 0 and len(out["floor"]["chromium_cpu"]) == 2


def test_fanout_rows_ratio_each_peer_to_sisas_and_keep_what_a_failed_peer_did() -> None:
    """The fan-out rows: sisas's p50 against each peer variant at the same width (above 1:
    sisas faster, aim 1), a peer that failed as a row saying why; a peer script's partial
    output (timed out) keeps its rows and names the fan-out it was in."""
    from bench.peers.runner import _last_line, _rows
    from bench.report import rows_for

    fan = {
        "items": [100, 1000],
        "worker_slots": 8,
        "sync": "always",
        "sisas": {
            "100": {"times_ms": [400.0], "run_ms_p50": 400.0, "per_item_ms": 4.0},
            "1000": {"times_ms": [5000.0], "run_ms_p50": 5000.0, "per_item_ms": 5.0},
        },
        "peers": [
            {"peer": "temporal", "variant": "fanout_activities", "items": 1000, "runs": 2,
             "run_ms_p50": 10000.0, "per_item_ms": 10.0, "version": "1.35.0"},
            {"peer": "prefect", "skipped": "run failed", "round": 2},
        ],
    }  # fmt: skip
    rows = rows_for({"fanout": fan})
    [slope] = [r for r in rows if r.measure == "sisas: per item at 1,000 items"]
    assert slope.ratio == pytest.approx(0.8)
    [vs] = [r for r in rows if "temporal" in r.measure]
    assert (vs.value, vs.reference, vs.ratio, vs.aim, vs.met) == (5000.0, 10000.0, 2.0, 1.0, True)
    [skipped] = [r for r in rows if r.measure == "prefect (round 2)"]
    assert skipped.value is None and skipped.note == "skipped: run failed"

    out = '{"progress": "dagster fanout_x 1000 items"}\n{"peer": "dagster", "items": 100}\n'
    assert _rows(out) == ([{"peer": "dagster", "items": 100}], "dagster fanout_x 1000 items")
    tb = "Traceback\nsqlalchemy.exc.OperationalError: (x) locked\n[SQL: x]\n(Background on ...)"
    assert _last_line(tb) == "sqlalchemy.exc.OperationalError: (x) locked"
