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
    "RunningServer",
    "Settings",
    "SignalLog",
    "bytes_digest",
    "open_bus",
    "running_server",
}
TESTING = {"DEFAULT_AT", "CheckResult", "RunResult", "run_pipeline"}


@pytest.mark.parametrize(
    ("module", "names"),
    [("sisas.signals", SIGNALS), ("sisas.bus", BUS), ("sisas.testing", TESTING)],
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
