"""The test suite's own layout: modules share code through tests/runs.py (runs and their
checks) and tests/cli_process.py (running the `sisas` command), fixtures through
conftest.py, never by importing a test module; and no module runs sisas its own way."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

TESTS = Path(__file__).parent
RUNNER = TESTS / "cli_process.py"


def findings(path: Path, source: str) -> list[str]:
    """Each place in ``source`` (the file ``path`` under tests/) that imports a test
    module (``test_*``) or, outside tests/cli_process.py, defines a ``sisas`` function
    or spells out ``python -m sisas…``: one line each, naming the fix."""
    where = path.relative_to(TESTS.parent)
    package = ".".join(where.with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        for name in _imported(node, package):
            if name.rsplit(".", 1)[-1].startswith("test_"):
                found.append(
                    f"{at}: imports the test module {name} "
                    "(share it from tests/runs.py, a fixture from conftest.py)"
                )
        if path == RUNNER:
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "sisas":
            found.append(f"{at}: defines sisas() (use tests/cli_process.py)")
        for flag, module in _pairs(node):
            if flag == "-m" and isinstance(module, str) and module.startswith("sisas"):
                found.append(
                    f"{at}: runs `python -m {module}` itself "
                    "(use sisas, sisas_async, Command or SISAS from tests/cli_process.py)"
                )
    return found


def _imported(node: ast.AST, package: str) -> list[str]:
    """The modules an import statement may load, absolute (``from tests import test_x``
    may load ``tests.test_x``; ``from .harness import x`` in tests/faults loads
    ``tests.faults.harness``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _pairs(node: ast.AST) -> list[tuple[object, object]]:
    """Neighbouring constants among a call's arguments or a list's or tuple's items."""
    if isinstance(node, ast.Call):
        items = node.args
    elif isinstance(node, ast.List | ast.Tuple):
        items = node.elts
    else:
        return []
    values = [item.value if isinstance(item, ast.Constant) else None for item in items]
    return list(itertools.pairwise(values))


def test_no_module_imports_a_test_module_or_runs_sisas_its_own_way() -> None:
    found = [
        line for path in sorted(TESTS.rglob("*.py")) for line in findings(path, path.read_text())
    ]
    assert found == [], "\n".join(found)


# the package is filled in, so that grepping the suite for such imports finds none
BREACHES = """
import subprocess, sys, asyncio
import {tests}.test_cli
from {tests}.test_runs_bus import start
from {tests} import conftest, test_replay
from .test_processes import reference
from . import test_servers

def sisas(*args):
    return subprocess.run([sys.executable, "-m", "sisas.cli", *args])

async def run(*args):
    await asyncio.create_subprocess_exec(sys.executable, "-m", "sisas.cli", *args)
""".format(tests="tests")

FINE = """
import subprocess, sys
from tests.cli_process import SISAS, sisas
from tests.conftest import AT
from tests.runs import start, wait_end
from .harness import Role

def bench():
    return subprocess.run([sys.executable, "-m", "bench", "all"])

def worker():
    return subprocess.Popen([*SISAS, "worker"])
"""


def test_the_layout_check_names_each_breach_and_passes_the_shared_modules() -> None:
    path = TESTS / "faults" / "test_example.py"
    found = findings(path, BREACHES)
    imported = [line.split("test module ")[1].split()[0] for line in found if "imports" in line]
    assert imported == [
        "tests.test_cli",
        "tests.test_runs_bus",
        "tests.test_replay",
        "tests.faults.test_processes",
        "tests.faults.test_servers",
    ]
    assert [line.split(": ")[1] for line in found if "imports" not in line] == [
        "defines sisas() (use tests/cli_process.py)",
        "runs `python -m sisas.cli` itself (use sisas, sisas_async, Command or SISAS from "
        "tests/cli_process.py)",
        "runs `python -m sisas.cli` itself (use sisas, sisas_async, Command or SISAS from "
        "tests/cli_process.py)",
    ]
    assert findings(path, FINE) == []
    assert findings(RUNNER, RUNNER.read_text()) == []  # where sisas is run from
