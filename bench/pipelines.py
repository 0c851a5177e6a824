"""The benchmark pipelines, importable by a worker process (``sisas worker --pipelines
bench/pipelines.py``) as well as in process.

- ``noop7``: 7 chained no-op phases (p0 -> p1 -> ... -> p6), the peers' workload;
- ``fanout100``: a phase returning 100 items, a fan-out phase over them (one attempt per
  item) and a join: 102 phase executions per run;
- ``fanwide``: the same fan-out, as wide as the run's input (bench/looplag.py).
"""

from __future__ import annotations

from sisas.pipeline import Context, Pipeline

__all__ = ["FANOUT_WIDTH", "fanout", "noop", "wide"]

FANOUT_WIDTH = 100

noop = Pipeline("noop7", version="1")


@noop.phase()
def p0(ctx: Context, input: int) -> int:
    return 0


@noop.phase(depends_on=["p0"])
def p1(ctx: Context, p0: int) -> int:
    return 1


@noop.phase(depends_on=["p1"])
def p2(ctx: Context, p1: int) -> int:
    return 2


@noop.phase(depends_on=["p2"])
def p3(ctx: Context, p2: int) -> int:
    return 3


@noop.phase(depends_on=["p3"])
def p4(ctx: Context, p3: int) -> int:
    return 4


@noop.phase(depends_on=["p4"])
def p5(ctx: Context, p4: int) -> int:
    return 5


@noop.phase(depends_on=["p5"])
def p6(ctx: Context, p5: int) -> int:
    return 6


fanout = Pipeline("fanout100", version="1")


@fanout.phase()
def items(ctx: Context, input: int) -> list[int]:
    return list(range(FANOUT_WIDTH))


@fanout.phase(map_over="items")
def each(ctx: Context, item: int) -> int:
    return item


@fanout.phase()
def join(ctx: Context, each: list[int]) -> int:
    return len(each)


wide = Pipeline("fanwide", version="1")
"""A fan-out as wide as the run's input (an int): items, one attempt per item, a join."""


@wide.phase()
def spread(ctx: Context, input: int) -> list[int]:
    return list(range(input))


@wide.phase(map_over="spread")
def each_item(ctx: Context, item: int) -> int:
    return item


@wide.phase()
def gather(ctx: Context, each_item: list[int]) -> int:
    return len(each_item)
