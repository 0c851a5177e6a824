"""numpy arrays and tables as phase outputs: stored in binary forms (.npy, Arrow IPC),
given downstream and into fan-outs, digested by content, checked by Array and Table
contracts, diffed by index and column on rerun, refused at registration when sisas
cannot store them; read back through the client and `sisas output`."""

import io
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import BaseModel, ConfigDict

from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.client import Client
from sisas.client.verification import rerun_signals
from sisas.errors import InvalidPipeline, UsageError
from sisas.loader import load_pipelines
from sisas.pipeline import Array, Context, Pipeline, Table
from sisas.services.host import running_services
from sisas.signals import semantic_digest
from sisas.testing import RunResult, run_pipeline
from tests.binary_pipelines import arrays, tables
from tests.cli_process import server_env, sisas_async

ROOT = Path(__file__).parent.parent
PIPES = str(ROOT / "tests" / "binary_pipelines.py")
SKUS = [{"sku": "apple"}, {"sku": "pear"}, {"sku": "plum"}]


def array_of(result: RunResult, phase: str, item: int | None = None) -> np.ndarray:
    """A stored array, read as a user reads the bytes (numpy.load, no pickle)."""
    return np.load(io.BytesIO(result.output_bytes(phase, item=item)), allow_pickle=False)


def table_of(result: RunResult, phase: str, item: int | None = None) -> pa.Table:
    return pa.ipc.open_file(pa.BufferReader(result.output_bytes(phase, item=item))).read_all()


def violations(result: RunResult, check: str) -> dict[str, str]:
    return {v.path: v.message for v in result.check(check).violations}


# -- flowing downstream -------------------------------------------------------------


def test_arrays_flow_downstream_and_into_fan_outs() -> None:
    result = run_pipeline(arrays, {"rows": 6, "blocks": 3}, seed=7).raise_for_status()
    sample = array_of(result, "sample")
    assert sample.dtype == np.float64 and sample.shape == (6, 3)
    # a fan-out over an array: one item per row, each a (3,) array
    assert result.output("norm") == pytest.approx(list(np.linalg.norm(sample, axis=1)))
    # returned under -> Any: stored as an array too
    assert np.allclose(array_of(result, "centre"), sample - sample.mean(axis=0))
    # each item of a fan-out returns an array; downstream gets them as a list of arrays
    assert [array_of(result, "block", item=i).tolist() for i in range(3)] == [
        [[i, i], [i, i]] for i in range(3)
    ]
    stacked = array_of(result, "stacked")
    assert stacked.tolist() == [6.0 + i for i in (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)]
    assert result.check("exit:ndarray[float64, (None, 3)]").passed
    assert result.check("entry:item:ndarray[float64]", phase="norm", item=0).passed
    # RunResult.output decodes as the client does
    assert np.array_equal(result.output("sample"), sample)
    assert [b.shape for b in result.output("block")] == [(2, 2)] * 3


def test_dataframes_and_tables_flow_downstream_and_into_fan_outs() -> None:
    result = run_pipeline(tables, SKUS, seed=7).raise_for_status()
    load = table_of(result, "load")
    assert load.column_names == ["sku", "price"]  # a DataFrame's row-numbering index is not kept
    assert load.column("sku").to_pylist() == ["apple", "pear", "plum"]
    prices = load.column("price").to_pylist()
    # downstream annotated pa.Table received a Table
    assert table_of(result, "as_arrow").column("double").to_pylist() == [2 * p for p in prices]
    # downstream annotated list[Row] received the rows as records
    assert result.output("records") == [
        {"sku": s["sku"], "price": p} for s, p in zip(SKUS, prices, strict=True)
    ]
    # a fan-out's DataFrames arrive as a list of DataFrames
    combined = table_of(result, "combined").to_pandas()
    assert combined["region"].tolist() == ["north"] * 3 + ["south"] * 3
    assert isinstance(result.output("load"), pd.DataFrame)  # as each phase returned it
    assert isinstance(result.output("as_arrow"), pa.Table)
    assert [len(f) for f in result.output("region")] == [3, 3]
    assert result.check("exit:DataFrame[sku: string, price: float64]").passed


# -- digests ------------------------------------------------------------------------


def test_digests_are_stable_across_runs_and_follow_the_data() -> None:
    first = run_pipeline(arrays, {"rows": 6}, seed=7)
    again = run_pipeline(arrays, {"rows": 6}, seed=7)
    other = run_pipeline(arrays, {"rows": 6}, seed=8)
    assert first.outputs == again.outputs and first.fingerprint == again.fingerprint
    assert first.outputs["sample"] != other.outputs["sample"]
    assert first.outputs["block"] == other.outputs["block"]  # same data: same digest
    # the digest is of the content: what a reader of the bytes digests
    assert first.outputs["sample"] == semantic_digest(array_of(first, "sample"))

    t1 = run_pipeline(tables, SKUS, seed=7)
    t2 = run_pipeline(tables, SKUS, seed=7)
    t3 = run_pipeline(tables, SKUS, seed=8)
    assert t1.outputs == t2.outputs and t1.outputs["load"] != t3.outputs["load"]
    assert t1.outputs["load"] == semantic_digest(table_of(t1, "load"))


def test_a_table_digests_by_schema_and_values_whatever_holds_it() -> None:
    frame = pd.DataFrame({"sku": ["a", "b", None], "price": [1.5, float("nan"), 3.0]})
    table = pa.table({"sku": ["a", "b", None], "price": [1.5, None, 3.0]})
    assert semantic_digest(frame) == semantic_digest(table)  # pandas NaN is Arrow's null
    renumbered = frame.set_axis(pd.Index([0, 1, 2]))  # not a RangeIndex, still 0, 1, 2
    assert semantic_digest(renumbered) == semantic_digest(frame)
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    assert semantic_digest(chunked) == semantic_digest(table)
    assert semantic_digest(frame[["price", "sku"]]) != semantic_digest(frame)  # column order
    assert semantic_digest(frame.set_axis(pd.Index([5, 6, 7]))) != semantic_digest(frame)
    assert semantic_digest(frame.astype({"price": "float32"})) != semantic_digest(frame)
    changed = frame.copy()
    changed.loc[2, "price"] = 3.5
    assert semantic_digest(changed) != semantic_digest(frame)
    # pinned: a change to how tables digest changes every recorded table's digest
    assert semantic_digest(table) == (
        "sha256:49076c7a87797ef6e9f09a95ecc1fec4f21d63ddae04dd4970e0e6032dfe54fb"
    )


# -- contracts ----------------------------------------------------------------------


def test_array_contracts_name_dtype_and_shape_at_the_exit() -> None:
    pipe = Pipeline("bad-array")

    @pipe.phase()
    def make(ctx: Context, input: Any) -> Annotated[np.ndarray, Array("float64", (None, 3))]:
        return np.zeros((4, 2), dtype=np.int32)

    result = run_pipeline(pipe, None)
    assert result.failed_phase == "make" and result.error is not None
    assert result.error.kind == "ContractViolation"
    assert violations(result, "exit:ndarray[float64, (None, 3)]") == {
        "output.dtype": "expected dtype float64, got int32",
        "output.shape[1]": "expected length 3, got 2",
    }
    quarantined = result.state.phase("make").quarantined
    assert np.load(io.BytesIO(result.artifacts[quarantined])).shape == (4, 2)  # kept as evidence


def test_array_and_table_contracts_name_the_field_at_the_entry() -> None:
    pipe = Pipeline("bad-entry")

    @pipe.phase()
    def make(ctx: Context, input: Any) -> np.ndarray:
        return np.zeros((4,))

    @pipe.phase()
    def use(ctx: Context, make: Annotated[np.ndarray, Array(shape=(None, 3))]) -> float:
        return 0.0

    result = run_pipeline(pipe, None)
    assert result.failed_phase == "use"
    assert violations(result, "entry:make:ndarray[(None, 3)]") == {
        "make.shape": "expected 2 dimensions (None, 3), got 1: shape (4,)"
    }

    fan = Pipeline("bad-items")

    @fan.phase()
    def parts(ctx: Context, input: Any) -> list[int]:
        return [0, 1, 2]

    @fan.phase(map_over="parts")
    def part(ctx: Context, item: int) -> np.ndarray:
        return np.zeros(2, dtype=np.int64 if item == 1 else np.float64)

    @fan.phase()
    def gather(ctx: Context, part: list[Annotated[np.ndarray, Array("float64")]]) -> float:
        return 0.0

    result = run_pipeline(fan, None)
    assert result.failed_phase == "gather"
    assert violations(result, "entry:part:list") == {
        "part[1].dtype": "expected dtype float64, got int64"
    }

    frames = Pipeline("bad-columns")

    @frames.phase()
    def load(ctx: Context, input: Any) -> pd.DataFrame:
        return pd.DataFrame({"sku": ["a"], "price": ["1.5"]})

    @frames.phase()
    def price(
        ctx: Context, load: Annotated[pa.Table, Table({"price": float, "qty": "int64"})]
    ) -> float:
        return 0.0

    result = run_pipeline(frames, None)
    assert violations(result, "entry:load:Table[price: float64, qty: int64]") == {
        "load.columns.price": "expected double, got string",
        "load.columns.qty": "missing column qty (int64); the table has sku, price",
    }


def test_table_contracts_name_the_column_at_the_exit() -> None:
    pipe = Pipeline("bad-table")

    @pipe.phase()
    def load(
        ctx: Context, input: Any
    ) -> Annotated[pd.DataFrame, Table({"sku": "string", "price": "float64"}, strict=True)]:
        return pd.DataFrame({"sku": ["a"], "price": [1], "note": ["x"]})

    result = run_pipeline(pipe, None)
    assert violations(result, "exit:DataFrame[sku: string, price: float64, strict]") == {
        "output.columns.price": "expected double, got int64",
        "output.columns.note": "column note is not in the contract (strict)",
    }


def test_an_input_of_records_is_built_into_a_checked_table() -> None:
    numbers = run_pipeline(tables, [{"sku": 1}, {"sku": 2}])
    assert numbers.failed_phase == "load"
    assert violations(numbers, "exit:DataFrame[sku: string, price: float64]") == {
        "output.columns.sku": "expected string, got int64"
    }
    text = run_pipeline(tables, "not a table")
    assert violations(text, "entry:input:DataFrame") == {
        "input": "expected a table: a list of records or a dict of columns (got a str)"
    }


# -- reruns -------------------------------------------------------------------------


def drifting(bump: float) -> Pipeline:
    """The same pipeline as recorded, or changed by ``bump`` (a rerun under new code)."""
    pipe = Pipeline("drift", version="1")

    @pipe.phase()
    def grid(ctx: Context, input: Any) -> np.ndarray:
        out = np.zeros((5, 2))
        out[3, 1] = 0.5 - bump
        return out

    @pipe.phase()
    def prices(ctx: Context, grid: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame({"sku": [f"s{i}" for i in range(20)], "price": np.arange(20.0)})
        frame.loc[17, "price"] += bump
        return frame

    return pipe


async def test_a_rerun_diff_names_the_index_of_an_array_and_the_cell_of_a_table() -> None:
    recorded = run_pipeline(drifting(0.0), None).raise_for_status()

    async def fetch(digest: str) -> bytes | None:
        return recorded.artifacts.get(digest)

    same = await rerun_signals(recorded.signals, {"drift": drifting(0.0)}, fetch)
    assert same.deterministic
    verdict = await rerun_signals(recorded.signals, {"drift": drifting(0.1)}, fetch)
    assert not verdict.deterministic
    diffs = {r.phase: [(d.path, d.recorded, d.new) for d in r.diff] for r in verdict.phases}
    assert diffs["grid"] == [("output[3, 1]", 0.5, 0.4)]
    assert diffs["prices"] == [("output.price[17]", 17.0, 17.1)]


# -- what sisas cannot store --------------------------------------------------------


class Opaque:
    """A class pydantic builds no schema for."""


class Holder(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    values: np.ndarray


@pytest.mark.parametrize(
    ("returns", "message"),
    [
        (Opaque, "returns Opaque, which sisas cannot store"),
        (list[np.ndarray], "holds a numpy array or a table inside"),
        (dict[str, pd.DataFrame], "return one (np.stack(...), pd.concat(...))"),
        (Holder, "holds a numpy array or a table inside"),
        (Annotated[pd.DataFrame, Array("float64")], "is a contract of a numpy array"),
        (Annotated[np.ndarray, Table({"a": "int64"})], "is a contract of a table"),
        (Annotated[pa.Table, Table({"a": "decimal"})], "'decimal' is no Arrow type"),
    ],
)
def test_outputs_sisas_cannot_store_are_refused_at_registration(returns: Any, message: str) -> None:
    pipe = Pipeline("refused")
    with pytest.raises(InvalidPipeline, match=re.escape(message)):

        @pipe.phase()
        def out(ctx: Context, input: Any) -> returns:  # type: ignore[valid-type]
            return None


def test_parameters_sisas_cannot_build_are_refused_at_registration() -> None:
    pipe = Pipeline("refused")
    with pytest.raises(InvalidPipeline, match="parameter load is dict"):

        @pipe.phase()
        def use(ctx: Context, load: dict[str, np.ndarray]) -> int:
            return 0

    with pytest.raises(InvalidPipeline, match="parameter load is Opaque"):

        @pipe.phase()
        def other(ctx: Context, load: Opaque) -> int:
            return 0

    with pytest.raises(InvalidPipeline, match=re.escape("Array(shape=(-1,))")):
        Array(shape=(-1,))


def test_what_worked_before_still_registers() -> None:
    from dataclasses import dataclass

    @dataclass
    class Pair:
        a: int
        b: float

    class Model(BaseModel):
        xs: list[float]

    pipe = Pipeline("kinds")

    @pipe.phase()
    def model(ctx: Context, input: Any) -> Model:
        return Model(xs=[1.0])

    @pipe.phase()
    def pair(ctx: Context, model: Model) -> Pair:
        return Pair(1, 2.0)

    @pipe.phase()
    def plain(ctx: Context, pair: Pair) -> dict[str, list[int]]:
        return {"a": [pair.a]}

    @pipe.phase()
    def anything(ctx: Context, plain: Any) -> Any:
        return {"mean": np.float64(1.5), "n": np.int64(2)}  # numpy scalars: plain numbers

    result = run_pipeline(pipe, None).raise_for_status()
    assert result.output("anything") == {"mean": 1.5, "n": 2}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([object(), 1], dtype=object), "dtype object cannot be stored"),
        ({"a": np.zeros(3)}, r"holds a numpy array inside.*arr\.tolist\(\)"),
        (pd.Series([1, 2]), r"series\.to_frame\(\)"),
        (Opaque(), "it holds a Opaque, which is neither JSON"),
    ],
)
def test_a_value_returned_under_any_that_cannot_be_stored_says_what_to_return(
    value: Any, message: str
) -> None:
    pipe = Pipeline("unstorable")

    @pipe.phase()
    def out(ctx: Context, input: Any) -> Any:
        return value

    result = run_pipeline(pipe, None)
    assert result.error is not None and result.error.kind == "ContractViolation"
    assert result.error.message.startswith("output of out cannot be stored: ")
    assert "Unable to serialize unknown type" not in result.error.message
    assert re.search(message, result.error.message), result.error.message


def test_a_dataframe_without_pyarrow_names_pip_install_pyarrow() -> None:
    """A machine without pyarrow (made so in a child process: the import fails)."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pyarrow"] = None  # `import pyarrow` raises ImportError from here on
        from typing import Any
        import pandas as pd
        from sisas.errors import InvalidPipeline
        from sisas.pipeline import Context, Pipeline
        from sisas.testing import run_pipeline

        typed = Pipeline("typed")
        try:
            @typed.phase()
            def frame(ctx: Context, input: Any) -> pd.DataFrame: ...
        except InvalidPipeline as exc:
            print("refused:", exc)

        untyped = Pipeline("untyped")

        @untyped.phase()
        def anything(ctx: Context, input: Any) -> Any:
            return pd.DataFrame({"a": [1]})

        result = run_pipeline(untyped, None)
        print("failed:", result.error.message)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    refused, failed = done.stdout.splitlines()
    assert refused.startswith("refused: phase frame: its output is a pandas DataFrame")
    assert refused.endswith("pip install pyarrow")
    assert failed.startswith("failed: output of anything cannot be stored")
    assert failed.endswith("pip install pyarrow")


# -- through a server, the client and `sisas output` --------------------------------


@pytest.fixture
async def client(bus: Bus, settings: Settings) -> AsyncIterator[Client]:
    pipes = load_pipelines([PIPES], entry_points=False)
    async with running_services(bus, pipes, concurrency=2):
        async with await Client.connect(settings) as c:
            yield c


@pytest.mark.timeout(120)
async def test_outputs_through_a_server_the_client_and_sisas_output(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    env = server_env(settings)

    handle = await client.start("arrays", {"rows": 5}, seed=3)
    result = await handle.result(timeout=60)
    run = handle.run_id
    sample = await client.output(run, "sample")
    assert isinstance(sample, np.ndarray) and sample.shape == (5, 3)
    assert semantic_digest(sample) == result.outputs["sample"]
    data = await client.output_bytes(run, "sample")
    assert np.array_equal(np.load(io.BytesIO(data), allow_pickle=False), sample)
    blocks = await client.output(run, "block")  # a fan-out of arrays: the list of them
    assert [b.tolist() for b in blocks] == [[[i, i], [i, i]] for i in range(3)]
    with pytest.raises(UsageError, match="ask for one"):
        await client.output_bytes(run, "block")
    small = await client.small_outputs(run)
    assert "blocks" in small and "sample" not in small  # arrays: read with output()

    shown = await sisas_async("output", run, "sample", env=env)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"sample in {run}: a numpy array, float64, shape (5, 3)" in text
    assert f"digest    {result.outputs['sample']}" in text
    saved = tmp_path / "sample.npy"
    wrote = await sisas_async("output", run, "sample", "--out", str(saved), env=env)
    assert wrote.returncode == 0, wrote.stderr
    assert np.array_equal(np.load(saved, allow_pickle=False), sample)
    item = await sisas_async("output", run, "block", "--item", "2", env=env)
    assert "a numpy array, int64, shape (2, 2)" in item.stdout, item.stderr
    refused = await sisas_async("output", run, "block", env=env)
    assert refused.returncode == 2 and "--item N" in refused.stderr

    # a resumed run verifies the arrays it reuses by their content's digest
    again = await client.request("arrays", resume_of=run, from_phase="stacked", code=arrays)
    resumed = (await again.handle.result(timeout=60)).state
    assert resumed is not None and resumed.status == "completed"
    reused = {n for n, ps in resumed.phases.items() if ps.skip_reason == "resumed"}
    assert reused == {"sample", "norm", "centre", "blocks", "block"}
    assert resumed.phase("stacked").output_digest == result.outputs["stacked"]

    handle = await client.start("tables", SKUS, seed=3)
    result = await handle.result(timeout=60)
    run = handle.run_id
    frame = await client.output(run, "load")
    assert isinstance(frame, pd.DataFrame) and frame["sku"].tolist() == ["apple", "pear", "plum"]
    assert isinstance(await client.output(run, "as_arrow"), pa.Table)
    shown = await sisas_async("output", run, "load", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:3] == [
        f"load in {run}: a table (pandas DataFrame), 3 rows, 2 columns",
        "  sku    string",
        "  price  double",
    ]
    assert f"digest    {result.outputs['load']}" in lines
    saved = tmp_path / "load.arrow"
    wrote = await sisas_async("output", run, "load", "--out", str(saved), env=env)
    assert wrote.returncode == 0, wrote.stderr
    with pa.memory_map(str(saved)) as source:
        read = pa.ipc.open_file(source).read_all()
    assert read.to_pandas().equals(frame)
