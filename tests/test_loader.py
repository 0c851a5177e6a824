"""Loading pipeline code by spec: a file holding two pipelines is named FILE.py:ATTR, as
the error for `sisas run two.py` says, and that spec works in another process too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sisas.errors import UsageError
from sisas.loader import load_pipelines
from tests.cli_process import fresh_env, sisas
from tests.runs import ROOT

TWO = """
from sisas.pipeline import Context, Pipeline

p1 = Pipeline("one", version="1")
p2 = Pipeline("two", version="1")


@p1.phase()
def double(ctx: Context, input: int) -> int:
    return input * 2


@p2.phase()
def triple(ctx: Context, input: int) -> int:
    return input * 3
"""


@pytest.fixture
def two(tmp_path: Path) -> Path:
    path = tmp_path / "two.py"
    path.write_text(TWO)
    return path


def test_file_colon_attr_loads_that_pipeline_only(two: Path) -> None:
    assert set(load_pipelines([str(two)], entry_points=False)) == {"one", "two"}
    [(name, pipe)] = load_pipelines([f"{two}:p1"], entry_points=False).items()
    assert name == "one"
    assert pipe.source == f"{two.absolute()}:p1"  # what a child process loads again
    [again] = load_pipelines([pipe.source], entry_points=False)
    assert again == "one"
    # the pipeline's name works after the colon too: the error below lists names
    assert set(load_pipelines([f"{two}:two"], entry_points=False)) == {"two"}


def test_file_colon_unknown_attr_lists_what_is_there(two: Path) -> None:
    with pytest.raises(UsageError) as err:
        load_pipelines([f"{two}:p3"], entry_points=False)
    assert str(err.value) == (
        f"pipeline file {two} has no 'p3': check the name "
        "(its pipelines: p1 (pipeline one), p2 (pipeline two))"
    )
    with pytest.raises(UsageError, match="does not exist"):
        load_pipelines([f"{two.parent / 'nosuch.py'}:p1"], entry_points=False)


def test_sisas_run_file_colon_attr_runs_it(two: Path, tmp_path: Path) -> None:
    env = {**fresh_env(tmp_path), "PYTHONPATH": str(ROOT)}
    data = tmp_path / "input.json"
    data.write_text("21")
    # relative, as a user types it: two.py:p1 from the file's folder
    out = sisas(
        "run", "two.py:p1", "--input", str(data), "--wait", "--json", env=env, cwd=two.parent
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["pipeline"], result["status"]) == ("one", "completed")


ETL = """
from sisas.pipeline import Context, Pipeline

pipeline = Pipeline("etl-beside", version="1")


@pipeline.phase()
def load(ctx: Context, input: int) -> int:
    return input + 1
"""


def test_a_pipeline_file_imports_the_module_beside_it(tmp_path: Path) -> None:
    """`--pipelines code/etl_sched.py` where the file does `from etl import pipeline`:
    the file's folder is importable while it loads, as under `python etl_sched.py`."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "loader_etl_beside.py").write_text(ETL)
    sched = code / "etl_sched.py"
    sched.write_text("from loader_etl_beside import pipeline\n")
    path_before = list(sys.path)
    assert set(load_pipelines([str(sched)], entry_points=False)) == {"etl-beside"}
    assert sys.path == path_before  # importable while loading, not after
    # in another process, from another folder, on its embedded nats-server
    env = {**fresh_env(tmp_path), "PYTHONPATH": str(ROOT)}
    data = tmp_path / "input.json"
    data.write_text("41")
    out = sisas("run", str(sched), "--input", str(data), "--wait", "--json", env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["pipeline"], result["status"]) == ("etl-beside", "completed")
    # a module that is truly missing: install it, or fix the import
    broken = code / "broken.py"
    broken.write_text("import loader_no_such_module_anywhere\n")
    with pytest.raises(UsageError) as err:
        load_pipelines([str(broken)], entry_points=False)
    assert "No module named 'loader_no_such_module_anywhere'" in str(err.value)
    assert f"neither installed nor in the file's folder ({code})" in str(err.value)
    assert "install the module loader_no_such_module_anywhere" in str(err.value)
