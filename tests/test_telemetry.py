"""OpenTelemetry: one trace per run across processes, metrics, and the OTEL_* exporters.

The cross-process test runs the CLI, an orchestrator and a worker as three processes,
each with the SDK's in-memory exporters (tests/otel_child.py), and checks that their
spans link into one tree per run through the trace context carried in NATS headers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus
from sisas.telemetry import run_trace_ids, trace_id_hex
from sisas.telemetry.setup import from_env
from tests.cli_process import Command, base_env, sisas, sisas_async
from tests.conftest import NatsServer
from tests.runs import ROOT, TEST_PIPES

CHILD = str(ROOT / "tests" / "otel_child.py")


def clean_env(**extra: str) -> dict[str, str]:
    return base_env(PYTHONPATH=str(ROOT), **extra)


async def child(out: Path, *args: str, env: dict[str, str]) -> Command:
    """``sisas ARGS`` with in-memory exporters, dumped to ``out`` when it exits."""
    return await Command.start(*args, env=env, program=[sys.executable, CHILD, str(out)])


def by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["span_id"]: s for s in spans}


def points(dump: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in dump["metrics"] if p["name"] == name]


async def test_a_runs_spans_link_across_the_cli_orchestrator_and_worker_processes(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    env = clean_env(
        SISAS_NATS_URL=nats_server.url, SISAS_HOME=str(tmp_path / "home"), SISAS_REPLICAS="1"
    )
    dumps = {role: tmp_path / f"{role}.json" for role in ("orchestrator", "worker")}
    orch = await child(dumps["orchestrator"], "orchestrator", env=env)
    worker = await child(dumps["worker"], "worker", "--pipelines", TEST_PIPES, env=env)
    try:
        registry = PlanRegistry(bus.js)
        for _ in range(400):
            if await registry.get("traced") and await registry.get("breaker"):
                break
            await asyncio.sleep(0.05)
        good, bad = tmp_path / "good.json", tmp_path / "bad.json"
        good.write_text('{"n": 3}')
        bad.write_text('{"n": -1}')
        runs: dict[str, dict[str, Any]] = {}
        for name, args, want in (
            ("good", ["traced", "--input", str(good)], 0),
            ("bad", ["traced", "--input", str(bad)], 1),
            ("breaker1", ["breaker", "--input", str(tmp_path / "b.json")], 1),
            ("breaker2", ["breaker", "--input", str(tmp_path / "b.json")], 1),
        ):
            (tmp_path / "b.json").write_text('"bad"')
            dump = tmp_path / f"run-{name}.json"
            run = await child(dump, "run", *args, "--seed", "7", "--wait", "--json", env=env)
            assert await run.finish(90) == want, run.err
            runs[name] = {"result": json.loads(run.out.strip().splitlines()[-1]), "dump": dump}
    finally:
        for cmd in (orch, worker):
            cmd.proc.send_signal(signal.SIGTERM)
        for cmd in (orch, worker):
            assert await cmd.finish(30) == 0, cmd.err

    cli = json.loads(runs["good"]["dump"].read_text())
    o = json.loads(dumps["orchestrator"].read_text())
    w = json.loads(dumps["worker"].read_text())
    run_id = runs["good"]["result"]["run_id"]
    trace_id = trace_id_hex(run_id)

    # The CLI's root span has the ids the run id derives; it ended with the run.
    (root,) = [s for s in cli["spans"] if s["name"] == "run traced"]
    assert root["parent_id"] is None
    assert (root["trace_id"], root["span_id"]) == (trace_id, f"{run_trace_ids(run_id)[1]:016x}")
    assert root["attributes"]["sisas.status"] == "completed"
    assert root["resource"]["sisas.role"] == "run"

    in_run = [s for s in o["spans"] + w["spans"] if s["attributes"]["sisas.run_id"] == run_id]
    assert {s["trace_id"] for s in in_run} == {trace_id}
    decide = by_id([s for s in o["spans"] if s["trace_id"] == trace_id])
    phases = by_id([s for s in w["spans"] if s["trace_id"] == trace_id])
    assert {s["resource"]["sisas.role"] for s in decide.values()} == {"orchestrator"}
    assert {s["resource"]["sisas.role"] for s in phases.values()} == {"worker"}
    pids = {s["resource"]["service.instance.id"] for s in [root, *in_run]}
    assert len(pids) == 3  # three processes, one trace

    (start,) = [s for s in decide.values() if s["name"] == "decide start_run"]
    assert start["parent_id"] == root["span_id"]  # CLI -> orchestrator, via SISAS_IN headers
    # A span per phase attempt (and fan-out item), each a child of the decision that
    # scheduled it (orchestrator -> worker, via the log's headers).
    attempts = sorted(
        (
            s["attributes"]["sisas.phase"],
            s["attributes"]["sisas.attempt"],
            s["attributes"]["sisas.item"],
        )
        for s in phases.values()
    )
    assert attempts == [
        ("shaky", 0, -1),
        ("shaky", 1, -1),
        ("spread", 0, -1),
        ("square", 0, 0),
        ("square", 0, 1),
        ("square", 0, 2),
        ("total", 0, -1),
    ]
    for span in phases.values():
        assert span["parent_id"] in decide, span["name"]
        assert span["kind"] == "CONSUMER"
    first = next(
        s
        for s in phases.values()
        if s["attributes"]["sisas.attempt"] == 0 and s["name"] == "phase shaky"
    )
    second = next(s for s in phases.values() if s["attributes"]["sisas.attempt"] == 1)
    assert decide[first["parent_id"]] is start
    assert first["status"] == "ERROR" and first["attributes"]["error.type"] == "HardFailure"
    assert second["status"] != "ERROR"
    assert decide[second["parent_id"]]["attributes"]["sisas.report"] == "failed"
    assert {
        "name": "contract_checked",
        "sisas.contract": "input:Order",
        "sisas.boundary": "entry",
        "sisas.passed": True,
    } in second["events"]
    # Every report the orchestrator decided continues the worker span that sent it.
    reports = [s for s in decide.values() if s["name"] == "decide phase_report"]
    assert len(reports) == 2 * len(phases)  # started + an outcome per attempt
    for report in reports:
        sender = phases[report["parent_id"]]
        assert sender["attributes"]["sisas.phase"] == report["attributes"]["sisas.phase"]
        assert sender["attributes"]["sisas.attempt"] == report["attributes"]["sisas.attempt"]

    # Metrics: attempts and durations (worker), retries, endings, circuits (orchestrator).
    traced = {"sisas.pipeline": "traced"}
    attempts_by = {
        (p["attributes"]["sisas.phase"], p["attributes"]["sisas.status"]): p["value"]
        for p in points(w, "sisas.phase.attempts")
        if p["attributes"]["sisas.pipeline"] == "traced"
    }
    # The good run's first attempt; the bad run's only one (a contract violation is not
    # retried: the same input would break it again).
    assert attempts_by[("shaky", "failed")] == 2
    assert attempts_by[("shaky", "completed")] == 1
    assert attempts_by[("square", "completed")] == 3
    assert sum(p["count"] for p in points(w, "sisas.phase.duration")) == sum(
        p["value"] for p in points(w, "sisas.phase.attempts")
    )
    assert [p["value"] for p in points(w, "sisas.contract.failures")] == [1]
    assert points(w, "sisas.contract.failures")[0]["attributes"] == {
        **traced,
        "sisas.phase": "shaky",
        "sisas.contract": "input:Order",
        "sisas.boundary": "entry",
    }
    retries = {p["attributes"]["sisas.phase"]: p["value"] for p in points(o, "sisas.phase.retries")}
    assert retries == {"shaky": 1}
    ended = {
        (p["attributes"]["sisas.pipeline"], p["attributes"]["sisas.status"]): p["value"]
        for p in points(o, "sisas.runs.ended")
    }
    assert ended == {("traced", "completed"): 1, ("traced", "failed"): 1, ("breaker", "failed"): 2}
    circuits = {
        (p["attributes"]["sisas.pipeline"], p["attributes"]["sisas.phase"]): p["value"]
        for p in points(o, "sisas.circuit.state")
    }
    assert circuits[("breaker", "fragile")] == 1  # the second failure opened it
    assert circuits[("traced", "shaky")] == 0  # one failure, then a success: closed


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps every request body by path."""

    received: dict[str, list[bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    received: dict[str, list[bytes]] = {}
    handler = type("Handler", (Collector,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


async def test_otlp_export_set_by_the_standard_variables_leaves_the_log_unchanged(
    collector: tuple[str, dict[str, list[bytes]]], tmp_path: Path
) -> None:
    endpoint, received = collector
    data = tmp_path / "in.json"
    data.write_text("1")
    args = ["run", "chain7", "--pipelines", TEST_PIPES, "--input", str(data)]
    results = []
    for name, otel in (
        ("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "pipelines"}),
        ("off", {}),
    ):
        done = await sisas_async(
            *args,
            "--seed",
            "7",
            "--wait",
            "--json",
            env=clean_env(SISAS_HOME=str(tmp_path / name), **otel),
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    # Trace context rides in headers, never in the signals: same chain, same fingerprint.
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
    assert results[0]["signals"] == results[1]["signals"]

    spans = []
    for body in received["/v1/traces"]:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert resource["service.name"] == "pipelines"
            spans += [s for ss in rs.scope_spans for s in ss.spans]
    run_id = results[0]["run_id"]
    names = sorted(s.name for s in spans if s.trace_id.hex() == trace_id_hex(run_id))
    assert names.count("run chain7") == 1
    assert [n for n in names if n.startswith("phase ")] == [f"phase p{i}" for i in range(7)]
    assert names.count("decide phase_report") == 14
    exported = set()
    for body in received["/v1/metrics"]:
        for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            exported |= {m.name for sm in rm.scope_metrics for m in sm.metrics}
    assert {"sisas.phase.attempts", "sisas.phase.duration", "sisas.runs.ended"} <= exported


async def test_console_export_goes_to_stderr_and_keeps_json_output_clean(tmp_path: Path) -> None:
    data = tmp_path / "in.json"
    data.write_text("1")
    done = await sisas_async(
        "run", "chain7", "--pipelines", TEST_PIPES, "--input", str(data), "--wait", "--json",
        env=clean_env(SISAS_HOME=str(tmp_path / "home"), OTEL_TRACES_EXPORTER="console"),
        timeout=90,
    )  # fmt: skip
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err
    assert json.loads(out)["status"] == "completed"  # stdout holds the result alone
    spans = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert "phase p6" in {s["name"] for s in spans}  # one JSON object per line (JSON Lines)
    assert trace_id_hex(json.loads(out)["run_id"]) in err


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: sisas exports to"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        ),
    ],
)
def test_an_exporter_sisas_cannot_honour_is_a_usage_error_naming_the_fix(
    env: dict[str, str], says: str, tmp_path: Path
) -> None:
    out = sisas("status", env=clean_env(SISAS_HOME=str(tmp_path), **env))
    assert out.returncode == 2
    assert says in out.stderr


def test_nothing_is_installed_unless_asked_or_when_disabled() -> None:
    assert from_env("run", {}) is None
    assert from_env("run", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}) is None
    assert (
        from_env("run", {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}) is None
    )


def test_trace_ids_derive_from_the_run_id() -> None:
    assert run_trace_ids("r1") == run_trace_ids("r1") != run_trace_ids("r2")
    assert len(trace_id_hex("r1")) == 32
