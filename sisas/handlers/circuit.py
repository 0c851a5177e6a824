"""Circuit breakers per pipeline phase, across runs: pure state and transitions.

A phase's circuit opens after ``threshold`` consecutive failed attempts (in any runs).
While open, new attempts of that phase are held back until the cool-down has passed;
the first attempt after it is the probe (half-open): its success closes the circuit,
its failure opens it again. Every transition is recorded as a signal in the run where
it happened (``circuit_opened``, ``circuit_closed``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

__all__ = ["Circuit", "after_failure", "after_success", "hold_back"]


class Circuit(msgspec.Struct, frozen=True, kw_only=True):
    """Consecutive failures of one phase, and since when it is open (None: closed)."""

    failures: int = 0
    opened_at: datetime | None = None


def after_failure(c: Circuit, at: datetime, threshold: int) -> tuple[Circuit, bool]:
    """The circuit after a failed attempt, and whether this failure opened it."""
    failures = c.failures + 1
    if failures >= threshold and (c.opened_at is None or failures > threshold):
        return Circuit(failures=failures, opened_at=at), c.opened_at is None
    return Circuit(failures=failures, opened_at=c.opened_at), False


def after_success(c: Circuit) -> tuple[Circuit, bool]:
    """The circuit after a successful attempt, and whether this success closed it."""
    return Circuit(), c.opened_at is not None


def hold_back(c: Circuit, at: datetime, cooldown: float) -> float:
    """Seconds a new attempt must wait: the rest of the cool-down while open, else 0."""
    if c.opened_at is None:
        return 0.0
    remaining = (c.opened_at + timedelta(seconds=cooldown) - at).total_seconds()
    return max(0.0, round(remaining, 6))
