"""Pipelines the dashboard's actions launch, cancel and re-execute (loaded by file path)."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, Field

from sisas.pipeline import Context, HardFailure, Pipeline


class Greeting(BaseModel):
    """The input of ``greet``: who, and how many times (1 to 5)."""

    name: str = Field(min_length=1)
    times: int = Field(ge=1, le=5)


greet = Pipeline("greet", version="1", input=Greeting)


@greet.phase()
def hello(ctx: Context, input: Greeting) -> str:
    return " ".join([f"hello {input.name}"] * input.times)


class Gate(BaseModel):
    """The input of ``gated``: a folder; ``second`` fails until a file ``open`` is in
    it, and ``nap`` seconds ``first`` takes (checking for a cancel)."""

    folder: str
    nap: float = 0.0


gated = Pipeline("gated", version="1", input=Gate)


@gated.phase()
def first(ctx: Context, input: Gate) -> str:
    deadline = time.monotonic() + input.nap
    while time.monotonic() < deadline and not ctx.cancelled:
        time.sleep(0.05)
    return input.folder


@gated.phase()
def second(ctx: Context, first: str) -> str:
    if not Path(first, "open").exists():
        raise HardFailure(f"the gate is shut: no file {first}/open")
    return "through"
