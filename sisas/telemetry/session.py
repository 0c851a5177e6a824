"""The CLI's entry to telemetry: the SDK is imported only when OTEL_* asks for it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["telemetry_session", "wanted"]

_ASKING = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


def wanted() -> bool:
    """Whether any variable that turns telemetry on is set."""
    return any(os.environ.get(v, "").strip() for v in _ASKING)


@contextlib.contextmanager
def telemetry_session(role: str) -> Iterator[None]:
    """Install telemetry from the environment for one command (``role`` names it in the
    resource as ``sisas.role``), and flush it when the block ends."""
    if not wanted():
        yield
        return
    from sisas.telemetry.setup import session

    with session(role):
        yield
