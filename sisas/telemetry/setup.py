"""Installing the OpenTelemetry SDK from the standard ``OTEL_*`` variables.

Off unless asked for: ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` name
``console`` (stderr, so ``--json`` output stays clean), ``otlp`` (http/protobuf, to
``OTEL_EXPORTER_OTLP_ENDPOINT``, default http://localhost:4318) or ``none``; setting an
OTLP endpoint alone turns both on with ``otlp``. ``OTEL_SDK_DISABLED=true`` wins over
everything. ``OTEL_SERVICE_NAME`` (default ``sisas``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_METRIC_EXPORT_INTERVAL`` and the exporters' own
variables are read by the SDK as usual. When the application already installed a
provider (``opentelemetry-instrument``, its own code), sisas uses that one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from sisas.errors import UsageError
from sisas.telemetry.ids import peek_forced, take_forced

__all__ = ["RunIdGenerator", "Telemetry", "from_env", "install", "session"]

EXPORTERS = ("console", "otlp", "none")


class RunIdGenerator(RandomIdGenerator):
    """Random ids, except a run's root span, which gets the ids its run id derives."""

    def generate_trace_id(self) -> int:
        forced = peek_forced()
        return forced[0] if forced else super().generate_trace_id()

    def generate_span_id(self) -> int:
        forced = take_forced()  # the root span's; its children get random ids
        return forced[1] if forced else super().generate_span_id()


class Telemetry:
    """The providers :func:`install` set up; :meth:`shutdown` flushes and stops them."""

    def __init__(self, tracer: TracerProvider | None, meter: MeterProvider | None) -> None:
        self.tracer_provider = tracer
        self.meter_provider = meter

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _resource(role: str) -> Resource:
    resource = Resource.create(
        {"sisas.role": role, "service.instance.id": f"{socket.gethostname()}-{os.getpid()}"}
    )
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "sisas"}))
    return resource


def install(
    *,
    role: str = "",
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
    batch: bool = True,
) -> Telemetry:
    """Install tracer and meter providers exporting to the given exporters and readers.

    ``batch=False`` exports each span when it ends (console, tests). Root spans of runs
    get ids derived from the run id (:class:`RunIdGenerator`).
    """
    resource = _resource(role)
    tracer: TracerProvider | None = None
    meter: MeterProvider | None = None
    if span_exporters:
        tracer = TracerProvider(resource=resource, id_generator=RunIdGenerator())
        for exporter in span_exporters:
            processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
            tracer.add_span_processor(processor)
        trace.set_tracer_provider(tracer)
    if metric_readers:
        meter = MeterProvider(resource=resource, metric_readers=list(metric_readers))
        metrics.set_meter_provider(meter)
    return Telemetry(tracer, meter)


def _chosen(env: Mapping[str, str], variable: str, endpoint: str) -> list[str]:
    raw = env.get(variable, "").strip()
    if not raw:
        wanted = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(endpoint)
        return ["otlp"] if wanted else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise UsageError(
                f"{variable}={raw}: sisas exports to {', '.join(EXPORTERS)}; "
                f"set {variable} to one of them (comma-separated)"
            )
    return [n for n in names if n != "none"]


def _check_protocol(env: Mapping[str, str], signal: str) -> None:
    for variable in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise UsageError(
                f"{variable}={protocol}: sisas ships the OTLP http/protobuf exporter; "
                f"set {variable}=http/protobuf and point OTEL_EXPORTER_OTLP_ENDPOINT at the "
                "collector's HTTP port (usually 4318)"
            )


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        # one compact JSON object per line: a file of them reads as JSON Lines
        return ConsoleSpanExporter(
            out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    _check_protocol(env, "TRACES")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str, env: Mapping[str, str]) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter(out=sys.stderr)
    _check_protocol(env, "METRICS")
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def from_env(role: str, env: Mapping[str, str] | None = None) -> Telemetry | None:
    """Install what the ``OTEL_*`` variables ask for; None when they ask for nothing
    (or a provider is installed already). Raises :class:`UsageError` for a value sisas
    cannot honour, naming the fix."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    traces = _chosen(env, "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    readers = _chosen(env, "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        traces = []
    if isinstance(metrics.get_meter_provider(), MeterProvider):
        readers = []
    if not traces and not readers:
        return None
    return install(
        role=role,
        span_exporters=[_span_exporter(n, env) for n in traces],
        metric_readers=[PeriodicExportingMetricReader(_metric_exporter(n, env)) for n in readers],
        batch="otlp" in traces,
    )


@contextlib.contextmanager
def session(role: str) -> Iterator[Telemetry | None]:
    """Telemetry from the environment for one command; flushed when the block ends."""
    telemetry = from_env(role)
    try:
        yield telemetry
    finally:
        if telemetry is not None:
            telemetry.shutdown()
