"""OpenTelemetry at the edges: traces, metrics and trace context in NATS headers.

Only the bus shells (orchestrator, worker, inputs, the JetStream log) and the CLI use
this package; signals, handlers and folds know nothing of it, so telemetry never
touches what is recorded or how it is decided. See docs/telemetry.md.
"""

from sisas.telemetry.ids import run_trace_ids

__all__ = ["run_trace_ids", "trace_id_hex"]


def trace_id_hex(run_id: str) -> str:
    """The 32-hex-digit trace id of ``run_id``'s trace, as tracing backends show it."""
    return f"{run_trace_ids(run_id)[0]:032x}"
