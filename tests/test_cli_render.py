"""What the CLI prints for people, at 80 columns: whole run ids and statuses, summaries
instead of Python reprs, the traceback of a failed phase, one meaning of `attempts`, a
demo whose hints fit and can be typed (review findings 13, 14, 16, 20, 26)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sisas.cli.render import Column, fit_table, signals_table, traceback_tail
from sisas.handlers.local import LocalRun
from sisas.signals import (
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    RunFailed,
    RunStarted,
    StoredSignal,
)
from sisas.signals.summary import signal_summary
from tests import render_pipeline
from tests.cli_process import fresh_env, sisas
from tests.conftest import AT
from tests.runs import ROOT

PIPELINE = "tests/render_pipeline.py"
REPR = re.compile(r"\b[A-Z][A-Za-z]+\(|\bNone\b|Traceback|\\n")
"""What a Python repr or a raw multi-line text looks like inside a line of output."""


def text_of(table: Table, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, highlight=False)
    console.print(table)
    return console.export_text()


def failed_run() -> LocalRun:
    run = LocalRun(render_pipeline.pipeline, "render-local", at=AT, clock=time.perf_counter)
    run.start(b"null", seed=3)
    run.run()
    return run


# -- summaries: one readable line per signal (#26) -------------------------------------


def test_a_summary_is_one_line_with_no_python_repr() -> None:
    signals = failed_run().signals
    for s in signals:
        summary = signal_summary(s)
        assert "\n" not in summary, (s.kind, summary)
        assert not REPR.search(summary), (s.kind, summary)
        assert len(summary) < 200, (s.kind, summary)
    by_kind = {s.kind: signal_summary(s) for s in signals}
    assert by_kind["run_started"].startswith("plan render 1.0, 3 phases, seed 3, code sha256:")
    assert by_kind["run_failed"] == (
        "HardFailure in divide: ZeroDivisionError: integer division or modulo by zero"
    )
    [invariant] = [s for s in signals if isinstance(s.body, InvariantChecked)]
    assert signal_summary(invariant) == "LOAD-FOUR passed (four values loaded)"
    items = [s for s in signals if isinstance(s.body, PhaseCompleted) and s.phase == "normalise"]
    assert sorted(signal_summary(s).split(":")[0] for s in items)[:4] == [
        "item 0",
        "item 1",
        "item 2",
        "item 3",
    ]
    # the full content stays in the signal (what --json prints)
    [failed] = [s.body for s in signals if isinstance(s.body, RunFailed)]
    assert failed.error.detail.startswith("Traceback (most recent call last)")
    [started] = [s.body for s in signals if isinstance(s.body, RunStarted)]
    assert started.plan is not None and len(started.plan.phases) == 3


# -- tracebacks (#20) ------------------------------------------------------------------


def test_the_traceback_tail_shows_the_user_frames_and_the_exception() -> None:
    failures = [s.body for s in failed_run().signals if isinstance(s.body, PhaseFailed)]
    assert len(failures) == 2  # the attempt and its retry
    tail = traceback_tail(failures[-1].error.detail)
    text = "\n".join(tail)
    assert "in divide" in text and "in ratio" in text
    assert "return total // 0" in text
    assert tail[-1] == "ZeroDivisionError: integer division or modulo by zero"
    assert "execute.py" not in text  # sisas calling the phase says nothing about it


def test_the_traceback_tail_keeps_the_last_frames_of_the_last_exception() -> None:
    def inner() -> None:
        raise ValueError("while reading\nthe second line")

    def middle() -> None:
        inner()

    def outer() -> None:
        middle()

    def recorded() -> str:
        import traceback

        try:
            try:
                {}["missing"]
            except KeyError:
                outer()  # raised while handling the KeyError: two chained tracebacks
        except ValueError:
            return traceback.format_exc()
        raise AssertionError("unreachable")

    text = recorded()
    assert "KeyError" in text and "During handling" in text
    tail = traceback_tail(text, frames=2)
    assert tail[0] == "… 2 earlier frames"  # recorded() and outer()
    frames = [line for line in tail if line.startswith('  File "')]
    assert [f.rsplit(" ", 1)[-1] for f in frames] == ["middle", "inner"]
    assert tail[-2:] == ["ValueError: while reading", "the second line"]
    assert "KeyError" not in "\n".join(tail)  # the first exception is in the full text
    plain = "contract output:Report failed\nsummary: field required"
    assert traceback_tail(plain) == plain.splitlines()


# -- tables that fit (#14) -------------------------------------------------------------


RUN_ID = "policy_evaluation-d2dc3b881ad0"


def test_a_fitted_table_drops_columns_before_it_cuts_a_run_id_or_a_status() -> None:
    columns = (
        Column("run"),
        Column("status"),
        Column("started", keep=60),
        Column("pipeline", keep=30),
        Column("version", keep=20),
        Column("fingerprint", keep=10),
        Column("note", keep=5),
    )
    row = [RUN_ID, Text("completed", "green"), "2026-11-22 11:23:53", "policy_evaluation"]
    rows = [[*row, "1.0", "3f5a0c9e12ab", ""]]
    for width, dropped in (
        (120, []),
        (80, ["pipeline", "version", "fingerprint"]),
        (50, ["started", "pipeline", "version", "fingerprint"]),
    ):
        table, left_out = fit_table(columns, rows, width=width)
        assert left_out == dropped  # the empty note column is left out and not reported
        text = text_of(table, width)
        assert RUN_ID in text and "completed" in text, text
        assert "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
    # narrower than a run id and a status: every character still shows, folded
    table, _ = fit_table(columns, rows, width=30)
    folded = "".join(line.split()[0] for line in text_of(table, 30).splitlines()[2:])
    assert folded == RUN_ID


def test_the_signals_table_gives_the_detail_room_at_80_columns() -> None:
    run = failed_run()
    records = [StoredSignal(stream_seq=i + 1, signal=s) for i, s in enumerate(run.signals)]
    table, dropped = signals_table(list(records), "run render-local", width=80)
    text = text_of(table)
    assert "hash" in dropped
    assert max(len(line) for line in text.splitlines()) <= 80
    words = " ".join(text.split())
    for s in run.signals:
        assert s.kind in words  # the kind is never cut
    assert "plan render 1.0, 3 phases" in words
    assert "HardFailure in divide: ZeroDivisionError: integer division or modulo by zero" in (words)


# -- the CLI as a user runs it, piped at 80 columns ------------------------------------


@dataclass
class Recorded:
    run_id: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One failed run of tests/render_pipeline.py on its own data folder."""
    env = fresh_env(tmp_path_factory.mktemp("render"), columns=80)
    out = sisas("run", PIPELINE, "--seed", "5", "--wait", "--json", env=env)
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed_phase"] == "divide"
    return Recorded(run_id=result["run_id"], env=env)


def test_runs_keeps_the_run_id_and_status_whole_at_80_columns(recorded: Recorded) -> None:
    out = sisas("runs", env=recorded.env)
    assert out.returncode == 0, out.stderr
    [row] = [line for line in out.stdout.splitlines() if recorded.run_id in line]
    assert row.split()[:2] == [recorded.run_id, "failed"]
    assert "divide" in row  # the failed phase is kept before duration, pipeline, version
    assert "…" not in out.stdout
    assert "not shown at 80 columns:" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80


def test_show_at_80_columns(recorded: Recorded) -> None:
    out = sisas("show", recorded.run_id, env=recorded.env)
    assert out.returncode == 1  # the run failed
    lines = out.stdout.splitlines()
    # a fan-out's item count stays on its phase's row, never a row of its own (#14)
    [fan_out] = [line for line in lines if line.startswith("normalise ")]
    assert fan_out.split()[:4] == ["normalise", "completed", "4", "4"]
    assert not any(line.strip() == "x4" for line in lines)
    # one meaning of attempts: the attempts workers ran, as the manifest counts them (#13)
    manifest = json.loads(sisas("manifest", recorded.run_id, env=recorded.env).stdout)
    divide = next(p for p in manifest["phases"] if p["name"] == "divide")
    normalise = next(p for p in manifest["phases"] if p["name"] == "normalise")
    assert (divide["attempts"], divide["retries"], normalise["attempts"]) == (2, 1, 4)
    [row] = [line for line in lines if line.startswith("divide ") and "retried" in line]
    assert "2 (1 retried)" in row
    # the error whole, on a line of its own, and the traceback's last frames (#20)
    error = lines.index("divide failed: HardFailure")
    assert lines[error + 1] == "  ZeroDivisionError: integer division or modulo by zero"
    assert lines[error + 2] == "  traceback of its last failed attempt:"
    end = lines.index("    ZeroDivisionError: integer division or modulo by zero")
    frames = lines[error + 3 : end]
    assert [f.strip() for f in frames if f.strip().startswith("return")] == [
        "return ratio(sum(normalise))",
        "return total // 0",
    ]
    assert "in ratio" in frames[-3] and "render_pipeline.py" in frames[-3]
    # no Python repr: an invariant that records no values says what it states (#26)
    assert "None" not in out.stdout
    assert "four values loaded" in out.stdout
    # every line fits but a source path or a full digest, each whole on its own line
    wide = [line for line in lines if len(line) > 80]
    assert all(w.startswith("      File") or " sha256:" in w for w in wide), wide


def test_signals_and_tail_print_summaries_not_reprs(recorded: Recorded) -> None:
    table = sisas("signals", recorded.run_id, env=recorded.env)
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert not REPR.search(table.stdout), table.stdout
    words = " ".join(table.stdout.split())
    assert "plan render 1.0, 3 phases" in words
    assert "HardFailure in divide: ZeroDivisionError" in words
    # the full content stays in --json
    data = json.loads(sisas("signals", recorded.run_id, "--json", env=recorded.env).stdout)
    count = str(len(data["signals"]))  # the whole log: this one run
    tail = sisas("tail", "--all", "--count", count, env=recorded.env)
    assert tail.returncode == 0, tail.stderr
    assert recorded.run_id in tail.stdout
    assert not REPR.search(tail.stdout), tail.stdout
    last = data["signals"][-1]["signal"]["body"]
    assert last["kind"] == "run_failed"
    assert "return total // 0" in last["error"]["detail"]


def test_the_demo_fits_80_columns_and_its_hints_can_be_typed(tmp_path: Path) -> None:
    env = {**fresh_env(tmp_path, columns=80), "SISAS_PROG": "./dev"}
    out = sisas("demo", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    hints = lines[lines.index("where to look next") + 1 :]
    commands = [line.strip() for line in hints if line.startswith("  ") and line[2] != " "]
    assert len(commands) > 10
    assert all(c.startswith("./dev ") for c in commands), commands
    assert not any(line.startswith("next:") for line in lines)
    # every line fits, but a command or the fingerprint, each whole on a line of its own
    wide = [line for line in lines if len(line) > 80]
    assert all(w.strip() in commands or w.startswith("fingerprint sha256:") for w in wide), wide
    run_id = next(line.split()[1] for line in lines if line.startswith("run ") and " in " in line)
    assert f"./dev show {run_id}" in commands
    # the demo's duration is the run's recorded one, the one show and runs print
    took = next(line for line in lines if line.startswith(f"run {run_id} completed in "))
    shown = sisas("show", run_id, env=env).stdout.splitlines()
    duration = next(line for line in shown if line.startswith("  started ")).split("duration ")[1]
    assert took.startswith(f"run {run_id} completed in {duration}, ")
    # "its N attempts run again" is what rerun re-executes and the manifest counts
    said = int(re.search(r"its (\d+) attempts run again", out.stdout).group(1))  # type: ignore[union-attr]
    manifest = json.loads(sisas("manifest", run_id, env=env).stdout)
    assert said == manifest["counters"]["attempts"]
    rerun = sisas(
        "replay", "rerun", run_id, "--pipelines", "examples.policy_evaluation", "--json", env=env
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(json.loads(rerun.stdout)["phases"]) == said


def test_a_big_run_prints_as_aligned_lines_with_the_columns_a_table_keeps() -> None:
    """Past BIG_RUN records `sisas signals` prints lines (a rich table of 50,000 rows
    took a minute): the same columns kept at a width, one line per record, aligned."""
    from sisas.cli.render import BIG_RUN
    from sisas.signals import StoredSignal
    from tests.log_contract import run_signals

    signals = run_signals("big", BIG_RUN + 1)
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
    lines, dropped = signals_table(records, "run big", width=60)
    assert isinstance(lines, Text)
    _, table_dropped = signals_table(records[:10], "run big", width=60)
    assert dropped == table_dropped  # the same columns left out at this width
    text = lines.plain.splitlines()
    headers = ["seq", "at", "phase", "kind", "try", "detail", "stream", "hash"]
    assert text[0] == "run big" and text[1].split() == [h for h in headers if h not in dropped]
    rows = text[3:]
    assert len(rows) == BIG_RUN + 1 and all(len(r) == len(rows[0]) for r in rows)
    assert rows[-1].lstrip().startswith(str(BIG_RUN + 1))
    kinds = [s for s in lines.spans if s.style and "bold" not in str(s.style)]
    assert kinds  # kinds keep their colour
    wide, _ = signals_table(records, "run big", width=250)
    assert len(wide.plain.splitlines()[1].split()) == 8  # every column fits


@pytest.mark.parametrize("asked", ["help", "--help"])
def test_dev_help_shows_the_dev_commands_then_the_sisas_help(asked: str) -> None:
    shown = subprocess.run(
        [str(ROOT / "dev"), asked], capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for command in ("./dev demo", "./dev test", "./dev lock", "./dev ARGS"):
        assert command in out, out
    assert out.index("./dev test") < out.index("Usage: sisas") < out.index("Commands:")
