"""Show the fault cases' counts at the end of the session, even without ``-s``."""

from __future__ import annotations

import pytest

from .harness import REPORTED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTED:
        terminalreporter.section("fault injection: counts per case")
        for line in REPORTED:
            terminalreporter.write_line(line)
