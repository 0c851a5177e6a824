"""`sisas logs`: each attempt's log on a real server, as a user reads it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_process import fresh_env, sisas
from tests.runs import TEST_PIPES


def test_logs_prints_each_attempt_with_its_lines_and_json_lines(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    data = tmp_path / "in.json"
    data.write_text('{"rows": 0, "lines": 3}')  # hang does not hang on 0 rows
    args = ["run", "chatty", "--pipelines", TEST_PIPES, "--input", str(data), "--seed", "1"]
    out = sisas(*args, "--wait", "--json", env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]

    shown = sisas("logs", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "talk attempt 0 failed" in text and "talk attempt 1 completed" in text
    assert "RuntimeError: the first attempt fails on purpose" in text
    assert "INFO line 2" in text and "stdout last words on stdout" in text

    lines = [
        json.loads(x) for x in sisas("logs", run_id, "talk", "--json", env=env).stdout.splitlines()
    ]
    assert [(x["phase"], x["attempt"], x["status"]) for x in lines] == [
        ("talk", 0, "failed"),
        ("talk", 1, "completed"),
    ]
    assert lines[1]["lines"] == 5 and lines[1]["dropped"] == 0
    assert lines[1]["log"].startswith("sha256:") and "INFO reading 0 rows" in lines[1]["text"]

    # --follow on an ended run prints what is there and stops.
    followed = sisas("logs", run_id, "hang", "--follow", env=env, timeout=60)
    assert followed.returncode == 0 and "hang attempt 0 completed" in followed.stdout

    assert sisas("logs", "no-such-run", env=env).returncode == 2
    wrong = sisas("logs", run_id, "nope", env=env)
    assert wrong.returncode == 2 and "no phase 'nope'" in wrong.stderr


def test_logs_of_a_phase_that_never_ran_in_an_ended_run_does_not_say_yet(
    tmp_path: Path,
) -> None:
    """p0 refuses its input, so p3 never runs: `logs RUN p3` says the run ended (no
    attempt will come), not "has ended yet" as for a run still going."""
    env = fresh_env(tmp_path)
    data = tmp_path / "in.json"
    data.write_text('"not an int"')
    args = ["run", "chain7", "--pipelines", TEST_PIPES, "--input", str(data), "--wait", "--json"]
    out = sisas(*args, env=env, timeout=120)
    assert out.returncode == 1, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    shown = sisas("logs", run_id, "p3", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"no attempt of p3 of {run_id} ended, and none will" in shown.stderr
    assert "(run_failed)" in shown.stderr and "yet" not in shown.stderr
