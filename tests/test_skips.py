"""A phase that does not run says why: after a switched-off phase it is skipped as
`upstream_disabled` (nothing failed), after a failed one as `upstream_failed`; `run
--wait` names what did not run."""

from __future__ import annotations

import json
from pathlib import Path

from sisas.pipeline import Context, HardFailure, Pipeline
from sisas.signals import PhaseSkipped
from sisas.testing import run_pipeline
from tests.cli_process import fresh_env, last_json, sisas
from tests.runs import EXAMPLE, POINTS_FILE


def chain() -> Pipeline:
    pipe = Pipeline("skips", version="1")

    @pipe.phase()
    def start(ctx: Context, input: int) -> int:
        return input

    @pipe.phase(enabled=False)
    def optional(ctx: Context, start: int) -> int:
        return start + 1

    @pipe.phase()
    def after_optional(ctx: Context, optional: int) -> int:
        return optional

    @pipe.phase(fatal=False)
    def fragile(ctx: Context, start: int) -> int:
        raise HardFailure("broke")

    @pipe.phase()
    def after_fragile(ctx: Context, fragile: int) -> int:
        return fragile

    return pipe


def test_a_phase_after_a_switched_off_one_is_skipped_as_upstream_disabled() -> None:
    result = run_pipeline(chain(), 1)
    skipped = {s.phase: s.body for s in result.signals if isinstance(s.body, PhaseSkipped)}
    assert skipped["optional"].reason == "disabled"
    assert skipped["after_optional"].reason == "upstream_disabled"
    assert skipped["after_optional"].detail == "needs optional"
    assert skipped["after_fragile"].reason == "upstream_failed"
    assert result.status == "completed"  # fragile is not fatal


def test_run_wait_names_what_did_not_run(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    done = sisas("run", EXAMPLE, "--input", str(POINTS_FILE), "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert "did not run: publish (disabled: side effects are off unless enabled)" in done.stdout
    as_json = sisas("run", EXAMPLE, "--input", str(POINTS_FILE), "--wait", "--json", env=env)
    assert last_json(as_json.stdout)["skipped"] == {
        "publish": "disabled: side effects are off unless enabled"
    }
    assert json.loads(as_json.stdout.splitlines()[-1])["status"] == "completed"
