"""Trace ids derived from run ids: every process finds a run's trace from its id alone.

A run's trace id is the first 16 bytes of ``sha256("sisas-trace:" + run_id)`` and its
root span id the next 8, so a run started by the CLI, a trigger or a raw NATS client
lands in one trace, and ``sisas show RUN`` can name the trace to look up.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator

__all__ = ["forced_ids", "peek_forced", "run_trace_ids", "take_forced"]

_FORCED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "sisas_forced_ids", default=None
)


def run_trace_ids(run_id: str) -> tuple[int, int]:
    """The trace id and root span id of ``run_id``'s trace (never zero)."""
    digest = hashlib.sha256(f"sisas-trace:{run_id}".encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


@contextlib.contextmanager
def forced_ids(run_id: str) -> Iterator[None]:
    """Inside the block, the next root span gets ``run_id``'s trace and span ids."""
    token = _FORCED.set(run_trace_ids(run_id))
    try:
        yield
    finally:
        _FORCED.reset(token)


def peek_forced() -> tuple[int, int] | None:
    """The ids forced for the next root span, if any, left in place."""
    return _FORCED.get()


def take_forced() -> tuple[int, int] | None:
    """The ids forced for the next root span, if any; only that span gets them."""
    forced = _FORCED.get()
    if forced is not None:
        _FORCED.set(None)
    return forced
