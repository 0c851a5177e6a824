"""The public names of each layer, pinned: removing or renaming one is a visible change."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import sisas

SIGNALS = {
    "BODY_TYPES",
    "ENDING_KINDS",
    "ERROR_KINDS",
    "GENESIS",
    "KINDS",
    "Body",
    "ChainHead",
    "ChainIssue",
    "CircuitClosed",
    "CircuitOpened",
    "ContractChecked",
    "CorruptMessage",
    "Draft",
    "ErrorInfo",
    "ErrorKind",
    "InvariantChecked",
    "LogGap",
    "LogRecord",
    "PhaseCompleted",
    "PhaseFailed",
    "PhaseRetryScheduled",
    "PhaseScheduled",
    "PhaseSkipped",
    "PhaseStarted",
    "PhaseTimedOut",
    "Resources",
    "RunCancelled",
    "RunQueued",
    "RunReleased",
    "RunWithdrawn",
    "ScheduleTicked",
    "BackfillRequested",
    "PartitionLaunched",
    "PartitionSkipped",
    "BackfillFinished",
    "TriggerEvaluated",
    "TriggerResult",
    "RunCompleted",
    "RunFailed",
    "RunRequested",
    "RunStarted",
    "Scalar",
    "Signal",
    "StoredSignal",
    "Violation",
    "canonical",
    "check_name",
    "content_hash",
    "decode_record",
    "decode_signal",
    "encode_signal",
    "input_subject",
    "log_subject",
    "run_filter",
    "seal",
    "semantic_digest",
    "signal_id",
    "verify_chain",
}
BUS = {
    "ARTIFACT_BUCKET",
    "INPUT_STREAM",
    "LOG_STREAM",
    "AppendResult",
    "ArtifactStore",
    "Bus",
    "EmbeddedServer",
    "JetStreamArtifacts",
    "JetStreamLog",
    "MemoryArtifacts",
    "MemoryLog",
    "Ports",
    "RunningServer",
    "Settings",
    "SignalLog",
    "bytes_digest",
    "memory_ports",
    "open_bus",
    "running_server",
}
TESTING = {"DEFAULT_AT", "CheckResult", "RunResult", "run_pipeline", "served_in_memory"}


TOP = {"Client", "Context", "Pipeline", "RunHandle", "RunResult", "SyncClient", "__version__"}
CLIENT = {"Client", "RunHandle", "RunResult", "Started", "SyncClient", "SyncRunHandle"}
PIPELINE = {
    "Array",
    "Cancelled",
    "Context",
    "ContractViolation",
    "HardFailure",
    "InvariantSpec",
    "InvariantViolation",
    "NonFatal",
    "PhaseError",
    "PhaseNotImplemented",
    "PhaseSpec",
    "Pipeline",
    "ResourceExhausted",
    "Table",
    "Timeout",
    "WorkerLost",
    "parse_memory",
}


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("sisas", TOP),
        ("sisas.pipeline", PIPELINE),
        ("sisas.client", CLIENT),
        ("sisas.signals", SIGNALS),
        ("sisas.bus", BUS),
        ("sisas.testing", TESTING),
    ],
)
def test_public_names_are_pinned(module: str, names: set[str]) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == names
    for name in names:
        assert hasattr(mod, name), name


def test_every_module_declares_its_public_names() -> None:
    missing = []
    for info in pkgutil.walk_packages(sisas.__path__, "sisas."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        if not hasattr(mod, "__all__") and info.name != "sisas.cli":
            missing.append(info.name)
    assert missing == []


def test_the_pure_core_imports_nothing_outward() -> None:
    """signals imports no other sisas layer (only sisas.errors): imports point inward."""
    import ast
    from pathlib import Path

    root = Path(sisas.__file__).parent / "signals"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sisas"):
                assert node.module.startswith(("sisas.signals", "sisas.errors")), (
                    path,
                    node.module,
                )


def test_the_pure_core_never_reads_the_clock_or_random_ids() -> None:
    from pathlib import Path

    root = Path(sisas.__file__).parent
    for layer in ("signals", "handlers"):
        for path in (root / layer).glob("*.py"):
            text = path.read_text()
            for banned in ("datetime.now", "utcnow", "time.time(", "uuid4", "import random"):
                assert banned not in text, f"{path.name} uses {banned}"


def test_replay_imports_only_the_pure_core() -> None:
    """replay/ verifies and judges from data: no bus, projection, CLI or audit import."""
    import ast
    from pathlib import Path

    allowed = ("sisas.signals", "sisas.handlers", "sisas.errors", "sisas.replay")
    allowed += ("sisas.pipeline", "sisas.loader")
    for path in (Path(sisas.__file__).parent / "replay").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sisas"):
                assert node.module.startswith(allowed), (path, node.module)


# Each layer: the sisas packages (or top-level modules) it may import, and the
# third-party I/O libraries it must not (docs/architecture.md draws the same picture).
LAYERS: dict[str, tuple[set[str], set[str]]] = {
    "signals": ({"signals", "errors"}, {"nats", "duckdb"}),
    "handlers": ({"signals", "errors", "handlers", "pipeline"}, {"nats", "duckdb"}),
    "projections": (
        {"signals", "errors", "handlers", "projections", "replay", "faults"},
        {"nats"},
    ),
    "replay": (
        {"signals", "errors", "handlers", "replay", "pipeline", "loader"},
        {"nats", "duckdb"},
    ),
    "audit": ({"signals", "errors", "handlers", "replay", "audit"}, {"nats", "duckdb"}),
    "telemetry": ({"signals", "errors", "handlers", "telemetry"}, {"nats", "duckdb"}),
    "security": ({"signals", "errors", "security"}, {"duckdb"}),
    "bus": ({"signals", "errors", "handlers", "bus", "telemetry"}, {"duckdb"}),
    "services": (
        {
            "signals",
            "errors",
            "handlers",
            "bus",
            "services",
            "client",
            "projections",
            "security",
            "telemetry",
            "pipeline",
            "loader",
            "environment",
            "faults",
        },
        set(),
    ),
    "client": (
        {
            "signals",
            "errors",
            "handlers",
            "bus",
            "services",
            "client",
            "projections",
            "replay",
            "telemetry",
            "pipeline",
            "loader",
            "environment",
        },
        set(),
    ),
}


def imported(path: object) -> set[str]:
    """Every module ``path``'s source imports, wherever the import statement is."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(str(path)).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_point_inward_and_io_stays_at_the_edges(layer: str) -> None:
    """A layer imports only the layers inside it; the pure and read layers import no
    NATS or DuckDB (adding ``import nats`` to projections/ fails here)."""
    from pathlib import Path

    allowed, banned = LAYERS[layer]
    root = Path(sisas.__file__).parent / layer
    paths = sorted(root.rglob("*.py"))
    assert paths, f"no layer {layer}"
    for path in paths:
        for module in imported(path):
            top, _, rest = module.partition(".")
            if top == "sisas" and rest:
                inner = rest.partition(".")[0]
                assert inner in allowed, f"{path.relative_to(root.parent)} imports {module}"
            assert top not in banned, f"{path.relative_to(root.parent)} imports {module}"


def test_the_layering_check_catches_a_nats_import_in_projections(tmp_path: object) -> None:
    """The check above is not vacuous: a projections module importing nats is caught."""
    from pathlib import Path

    bad = Path(str(tmp_path)) / "bad.py"
    bad.write_text("import duckdb\nfrom nats.aio.client import Client\n")
    found = imported(bad)
    _, banned = LAYERS["projections"]
    assert {m.partition(".")[0] for m in found} & banned == {"nats"}
