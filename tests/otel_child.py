"""Run one sisas command with the OpenTelemetry SDK's in-memory exporters installed,
then write the finished spans and the metrics to a JSON file.

    python tests/otel_child.py OUT.json COMMAND [ARGS...]

Used by tests/test_telemetry.py to see what each process of a run exported.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sisas.telemetry.setup import install


def _span(span: Any) -> dict[str, Any]:
    ctx, parent = span.context, span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, **dict(e.attributes or {})} for e in span.events],
        "resource": {k: v for k, v in span.resource.attributes.items() if isinstance(v, str)},
    }


def _metrics(reader: InMemoryMetricReader) -> list[dict[str, Any]]:
    data = reader.get_metrics_data()
    out: list[dict[str, Any]] = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    out.append(
                        {
                            "name": metric.name,
                            "attributes": dict(point.attributes or {}),
                            "value": value,
                            "count": getattr(point, "count", None),
                        }
                    )
    return out


def main() -> None:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    install(role=args[0], span_exporters=[spans], metric_readers=[reader], batch=False)
    code: int | str | None = 0
    try:
        from sisas.cli.main import cli

        cli.main(args, prog_name="sisas")
    except SystemExit as exc:
        code = exc.code
    finally:
        dump = {
            "spans": [_span(s) for s in spans.get_finished_spans()],
            "metrics": _metrics(reader),
        }
        out.write_text(json.dumps(dump, indent=1, default=str))
    sys.exit(code)


if __name__ == "__main__":
    main()
