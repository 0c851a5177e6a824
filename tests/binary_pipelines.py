"""Pipelines whose outputs are numpy arrays and tables (tests/test_outputs_binary.py; the
end-to-end test loads this file on a worker as `--pipelines` would)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from sisas.pipeline import Array, Context, Pipeline, Table

Points = Annotated[np.ndarray, Array(dtype="float64", shape=(None, 3))]
Prices = Annotated[pd.DataFrame, Table(columns={"sku": "string", "price": "float64"})]


class Spec(BaseModel):
    rows: int = 6
    blocks: int = 3


class Row(BaseModel):
    sku: str
    price: float


arrays = Pipeline("arrays", version="1", input=Spec)


@arrays.phase(timeout=30)
def sample(ctx: Context, input: Spec) -> Points:
    """A (rows, 3) float64 array drawn from the seeded generator (on a worker, in a child
    process: its timeout)."""
    return ctx.rng.normal(size=(input.rows, 3))


@arrays.phase(map_over="sample")
def norm(ctx: Context, item: npt.NDArray[np.float64]) -> float:
    """One row of `sample` per item: a fan-out over an array's first axis."""
    return float(np.linalg.norm(item))


@arrays.phase()
def centre(ctx: Context, sample: Points) -> Any:
    """An array returned under `-> Any` is stored as an array too."""
    return sample - sample.mean(axis=0)


@arrays.phase()
def blocks(ctx: Context, input: Spec) -> list[int]:
    return list(range(input.blocks))


@arrays.phase(map_over="blocks")
def block(ctx: Context, item: int) -> npt.NDArray[np.int64]:
    """Each item of a fan-out returns an array."""
    return np.full((2, 2), item, dtype=np.int64)


@arrays.phase()
def stacked(ctx: Context, block: list[np.ndarray], centre: np.ndarray, norm: list[float]) -> Any:
    """A fan-out's arrays arrive as a list of arrays."""
    return np.concatenate([b.ravel() for b in block]).astype(np.float64) + len(norm)


tables = Pipeline("tables", version="1")


@tables.phase()
def load(ctx: Context, input: pd.DataFrame) -> Prices:
    """The run input (JSON records) built into a DataFrame; prices drawn from the seed."""
    frame = input.copy()
    frame["price"] = ctx.rng.uniform(1, 10, size=len(frame)).round(2)
    return frame


@tables.phase()
def as_arrow(ctx: Context, load: pa.Table) -> pa.Table:
    """A DataFrame output read as a pyarrow Table."""
    return load.append_column("double", pc.multiply(load["price"], 2))


@tables.phase()
def records(ctx: Context, load: list[Row]) -> list[Row]:
    """A table read as plain data: its rows as records."""
    return [r for r in load if r.price > 0]


@tables.phase()
def regions(ctx: Context, input: Any) -> list[str]:
    return ["north", "south"]


@tables.phase(map_over="regions")
def region(ctx: Context, item: str, load: pd.DataFrame) -> pd.DataFrame:
    """Each item of a fan-out returns a DataFrame."""
    return load.assign(region=item)


@tables.phase()
def combined(ctx: Context, region: list[pd.DataFrame], as_arrow: Any) -> Any:
    """A fan-out's DataFrames arrive as a list; `Any` receives what was returned."""
    assert isinstance(as_arrow, pa.Table)
    return pd.concat(region, ignore_index=True)
