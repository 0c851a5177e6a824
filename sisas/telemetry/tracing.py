"""Spans for runs, decisions and phase attempts, and their context in NATS headers.

The W3C ``traceparent`` (and ``tracestate``, baggage) of the current span is written
into the headers of every input published to ``SISAS_IN`` and every signal appended to
the log. The orchestrator continues the trace of the input it decides; a worker the
trace of the ``phase_scheduled`` signal it executes. A message with no trace context
(a raw NATS client, a run from before tracing was on) continues the run's own trace,
whose ids derive from the run id (:mod:`sisas.telemetry.ids`).

Headers are transport metadata: they are never part of a signal's bytes or hash, so
tracing on or off changes nothing in the log's chain.

Everything here is a no-op until a tracer provider is installed
(:func:`sisas.telemetry.setup.install`, or the application's own SDK setup).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from sisas.handlers.execute import Outcome
from sisas.telemetry.ids import forced_ids, run_trace_ids

__all__ = [
    "Attributes",
    "describe_attempt",
    "enabled",
    "fail_span",
    "current_context",
    "inject",
    "message_span",
    "run_context",
    "run_span",
    "span_in_run",
    "within",
]

Attributes = Mapping[str, str | int | float | bool]
_tracer = trace.get_tracer("sisas")


_NAMED_BY_ENV: Final = OTEL_PYTHON_TRACER_PROVIDER in os.environ


def enabled() -> bool:
    """Whether a tracer provider is installed in this process. Asked several times per
    decision: without a provider set and none named by the environment (read once, as
    OpenTelemetry's own default is), the answer costs no lookup of the environment."""
    if not _NAMED_BY_ENV and getattr(trace, "_TRACER_PROVIDER", True) is None:
        return False
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's context to ``headers`` (unchanged when tracing is off)."""
    if enabled():
        from opentelemetry import propagate  # reads OTEL_PROPAGATORS: only when tracing

        propagate.inject(headers)
    return headers


def current_context() -> Context:
    """The trace context now in force, to carry work to another task (see :func:`within`)."""
    from opentelemetry import context

    return context.get_current()


@contextlib.contextmanager
def within(ctx: Context | None) -> Iterator[None]:
    """Make ``ctx`` current for the block: what it writes is the cause's child.

    A commit decided for several inputs is written once, under the context of the input
    whose decision came last (a retry is the child of the failure that asked for it)."""
    if ctx is None or not enabled():
        yield
        return
    from opentelemetry import context

    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def run_context(run_id: str) -> Context:
    """A context whose parent is ``run_id``'s root span, wherever it was recorded."""
    trace_id, span_id = run_trace_ids(run_id)
    parent = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())


def _context_of(headers: Mapping[str, str] | None, run_id: str) -> Context:
    from opentelemetry import propagate

    ctx = propagate.extract(dict(headers or {}), context=Context())
    if trace.get_current_span(ctx).get_span_context().is_valid:
        return ctx
    return run_context(run_id)


def _attributes(run_id: str, pipeline: str, extra: Attributes | None) -> dict[str, Any]:
    return {"sisas.run_id": run_id, "sisas.pipeline": pipeline, **(extra or {})}


@contextlib.contextmanager
def run_span(
    name: str, run_id: str, pipeline: str, attributes: Attributes | None = None
) -> Iterator[Span]:
    """The root span of ``run_id``'s trace (the CLI or trigger that starts the run).

    With sisas's own provider the span gets the ids derived from the run id, so the
    signals' headers and a message without any land in one trace.
    """
    if not enabled():
        yield INVALID_SPAN
        return
    with (
        forced_ids(run_id),
        _tracer.start_as_current_span(
            name,
            context=Context(),
            kind=SpanKind.PRODUCER,
            attributes=_attributes(run_id, pipeline, attributes),
        ) as span,
    ):
        yield span


@contextlib.contextmanager
def message_span(
    name: str,
    headers: Mapping[str, str] | None,
    run_id: str,
    pipeline: str,
    attributes: Attributes | None = None,
) -> Iterator[Span]:
    """A span continuing the trace carried by a received message's ``headers``."""
    if not enabled():
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        name,
        context=_context_of(headers, run_id),
        kind=SpanKind.CONSUMER,
        attributes=_attributes(run_id, pipeline, attributes),
    ) as span:
        yield span


@contextlib.contextmanager
def span_in_run(
    name: str, run_id: str, pipeline: str, attributes: Attributes | None = None
) -> Iterator[Span]:
    """A span in ``run_id``'s trace under its root (a command about an existing run)."""
    with message_span(name, None, run_id, pipeline, attributes) as span:
        yield span


def fail_span(span: Span, description: str) -> None:
    """Mark ``span`` as failed with ``description``."""
    span.set_status(Status(StatusCode.ERROR, description))


def describe_attempt(span: Span, status: str, outcome: Outcome) -> None:
    """Record a phase attempt's outcome on its span: status, digest, one event per
    contract and invariant check, the error."""
    if not span.is_recording():
        return
    span.set_attribute("sisas.status", status)
    if outcome.output_digest:
        span.set_attribute("sisas.output_digest", outcome.output_digest)
    if outcome.item_count is not None:
        span.set_attribute("sisas.item_count", outcome.item_count)
    for c in outcome.contracts:
        span.add_event(
            "contract_checked",
            {"sisas.contract": c.contract, "sisas.boundary": c.boundary, "sisas.passed": c.passed},
        )
    for i in outcome.invariants:
        span.add_event(
            "invariant_checked", {"sisas.invariant": i.invariant, "sisas.passed": i.passed}
        )
    if status != "completed":
        error = outcome.error
        kind = error.kind if error else status
        span.set_attribute("error.type", kind)
        fail_span(span, f"{kind}: {error.message}" if error else status)
