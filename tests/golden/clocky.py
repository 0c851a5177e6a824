"""A pipeline that is not deterministic on purpose: one phase reads the clock, one an
unseeded generator. Its golden log (tests/golden/nondeterministic/) was recorded once;
rerunning it today must find the divergence."""

from __future__ import annotations

import random
import time

from sisas.pipeline import Context, Pipeline

pipeline = Pipeline("clocky", version="1")


@pipeline.phase()
def load(ctx: Context, input: dict[str, list[float]]) -> list[float]:
    return input["values"]


@pipeline.phase()
def seeded(ctx: Context, load: list[float]) -> float:
    return round(sum(load) + float(ctx.rng.random()), 12)


@pipeline.phase()
def stamp(ctx: Context, load: list[float]) -> dict[str, float]:
    return {"total": sum(load), "at": time.time()}  # the wall clock: not reproducible


@pipeline.phase()
def noisy(ctx: Context, seeded: float) -> float:
    return seeded + random.random()  # an unseeded generator: not reproducible
