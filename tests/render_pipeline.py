"""A pipeline that fails the way a user's does: a fan-out, an invariant that records no
values, and a last phase that raises from a helper after one retry (tests/test_cli_render.py).
"""

from __future__ import annotations

from sisas.pipeline import Context, Pipeline

pipeline = Pipeline("render", version="1.0")


@pipeline.phase()
def load(ctx: Context, input: object) -> list[int]:
    return [1, 2, 3, 4]


@pipeline.invariant("LOAD-FOUR", phase="load", description="four values loaded")
def four_values(out: list[int]) -> bool:
    return len(out) == 4


@pipeline.phase(map_over="load")
def normalise(ctx: Context, item: int) -> int:
    return item * item


def ratio(total: int) -> int:
    return total // 0


@pipeline.phase(retries=1, backoff=0.01)
def divide(ctx: Context, normalise: list[int]) -> int:
    ctx.log.warning("dividing %d values", len(normalise))
    return ratio(sum(normalise))
