"""Failpoints: named places where a fault-injection test makes this process die.

``SISAS_FAILPOINTS="orchestrator.before_ack=2,projector.mid_batch=1"`` makes the process
SIGKILL itself the 2nd time it reaches ``orchestrator.before_ack`` and the 1st time it
reaches ``projector.mid_batch``: no clean-up, no flushed buffers, exactly like a crash
at that line. Unset (always, outside tests/faults/), a failpoint is one dict lookup.

The places:

- ``orchestrator.before_ack``: a decision's signals are in the log, its input is not
  acknowledged yet (the input is redelivered to whoever comes next).
- ``projector.mid_batch``: a batch's rows are written inside the DuckDB transaction,
  its commit has not happened.
- ``projector.between_batches``: a batch is committed (rows and checkpoint), the
  projector has not taken the next one (records read from the log may be queued).
- ``worker.before_report``: an attempt ran and its output is stored; the report is not
  published.
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]


def _parse(raw: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, nth = part.partition("=")
        points[name.strip()] = int(nth) if nth.strip().isdigit() else 1
    return points


_ARMED = _parse(os.environ.get("SISAS_FAILPOINTS", ""))
_PASSES: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here (SIGKILL) if ``name`` is armed and this is its armed pass."""
    if not _ARMED:
        return
    nth = _ARMED.get(name)
    if nth is None:
        return
    _PASSES[name] = _PASSES.get(name, 0) + 1
    if _PASSES[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
