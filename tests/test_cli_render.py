"""What the CLI prints for people: summaries instead of Python reprs (review finding 26)."""

from __future__ import annotations

import re
import time

from sisas.handlers.local import LocalRun
from sisas.signals import InvariantChecked, PhaseCompleted, RunFailed, RunStarted
from sisas.signals.summary import signal_summary
from tests import render_pipeline
from tests.conftest import AT

REPR = re.compile(r"\b[A-Z][A-Za-z]+\(|\bNone\b|Traceback|\\n")
"""What a Python repr or a raw multi-line text looks like inside a line of output."""


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
