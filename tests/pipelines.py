"""Small pipelines for the tests. The distributed tests load the module-level ones by
file path (also in child processes); :func:`small` makes a new one per call for runs in
process."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from sisas.pipeline import Context, HardFailure, NonFatal, Pipeline

slow = Pipeline("slow", version="1")


@slow.phase()
def nap(ctx: Context, input: dict[str, float | str]) -> float:
    marker = input.get("marker_dir")
    if marker:
        Path(str(marker), f"nap-{os.getpid()}").write_text(str(ctx.attempt))
    time.sleep(float(input.get("seconds", 0.5)))
    return float(input.get("seconds", 0.5))


@slow.phase()
def after(ctx: Context, nap: float) -> float:
    return nap * 2


limits = Pipeline("limits", version="1")


@limits.phase(timeout=0.5, retries=1, backoff=0.01)
def stuck(ctx: Context, input: str) -> str:
    if input == "hang":
        time.sleep(60)  # ignores its timeout: must be killed
    return input


@limits.phase(memory_limit="150MB")
def hungry(ctx: Context, stuck: str) -> int:
    if stuck == "eat":
        blob = bytearray(400 * 1024 * 1024)  # 400 MB, past the limit
        time.sleep(5)
        return len(blob)
    return 0


chain = Pipeline("chain7", version="1")


for i in range(7):
    params = "ctx: Context, input: int" if i == 0 else f"ctx: Context, p{i - 1}: int"
    ns: dict[str, object] = {"Context": Context}
    exec(f"def p{i}({params}) -> int:\n    return {i}\n", ns)
    chain.phase(name=f"p{i}")(ns[f"p{i}"])


breaker = Pipeline("breaker", version="1", circuit_threshold=2, circuit_cooldown=1.0)


@breaker.phase()
def fragile(ctx: Context, input: str) -> str:
    if input == "bad":
        raise HardFailure("the downstream service refuses")
    return input


class Order(BaseModel):
    """The entry contract of ``traced``: a count that cannot be negative."""

    n: int = Field(ge=0)


traced = Pipeline("traced", version="1")


@traced.phase(retries=1, backoff=0.01)
def shaky(ctx: Context, input: Order) -> int:
    if ctx.attempt == 0:
        raise RuntimeError("the first attempt fails on purpose")
    return input.n


@traced.phase()
def spread(ctx: Context, shaky: int) -> list[int]:
    return [shaky, shaky + 1, shaky + 2]


@traced.phase(map_over="spread")
def square(ctx: Context, item: int) -> int:
    return item * item


@traced.phase()
def total(ctx: Context, square: list[int]) -> int:
    return sum(square)


class Weights(BaseModel):
    weights: list[float]


def small(fatal: bool = True, broken: bool = False) -> Pipeline:
    """A new ``small`` pipeline: ``first`` normalises its input to weights (INV-1: they
    sum to 1; ``broken`` doubles them), ``optional`` fails (with NonFatal unless
    ``fatal``), ``after`` needs it, ``independent`` does not."""
    pipe = Pipeline("small", version="1")

    @pipe.phase()
    def first(ctx: Context, input: list[float]) -> Weights:
        total = sum(input)
        return Weights(weights=[w / total * (2 if broken else 1) for w in input])

    @pipe.invariant("INV-1", phase="first", description="weights sum to 1")
    def sums(out: Weights) -> tuple[bool, float, float]:
        return abs(sum(out.weights) - 1) < 1e-9, sum(out.weights), 1.0

    @pipe.phase(fatal=fatal)
    def optional(ctx: Context, first: Weights) -> int:
        raise NonFatal("no data today") if not fatal else RuntimeError("boom")

    @pipe.phase()
    def after(ctx: Context, optional: int) -> int:
        return optional

    @pipe.phase()
    def independent(ctx: Context, first: Weights) -> int:
        return len(first.weights)

    return pipe


chatty = Pipeline("chatty", version="1")


@chatty.phase(retries=1, backoff=0.01)
def talk(ctx: Context, input: dict[str, int]) -> int:
    ctx.log.info("reading %d rows", input["rows"])
    ctx.log.debug("not kept: below INFO")
    print(f"printed by attempt {ctx.attempt}")
    if ctx.attempt == 0:
        raise RuntimeError("the first attempt fails on purpose")
    for i in range(input.get("lines", 0)):
        ctx.log.info("line %d", i)
    return input["rows"]


@chatty.phase(timeout=1.0, retries=0)
def hang(ctx: Context, talk: int) -> int:
    ctx.log.warning("about to hang with %d rows", talk)
    print("last words on stdout", flush=True)
    if talk > 0:
        time.sleep(60)  # killed past its timeout: what it logged is kept
    return talk


wide = Pipeline("wide", version="1")
"""A fan-out over ``input["n"]`` items: items 7 and 27 fail their first attempt and
are retried, item 3 is the slowest; INV-ITEM holds for every item, INV-TOTAL
(the sum stays under 100) breaks for 15 items or more, so the run fails at the end."""


@wide.phase()
def source(ctx: Context, input: dict[str, int]) -> list[int]:
    return list(range(input["n"]))


@wide.phase(map_over="source", retries=1, backoff=0.01)
def work(ctx: Context, item: int) -> int:
    if item in (7, 27) and ctx.attempt == 0:
        raise RuntimeError(f"item {item} fails its first attempt on purpose")
    if item == 3:
        time.sleep(0.3)
    return item


@wide.invariant("INV-ITEM", phase="work", description="an item's result is not negative")
def not_negative(out: int) -> tuple[bool, int, str]:
    return out >= 0, out, ">= 0"


@wide.phase(name="total")
def wide_total(ctx: Context, work: list[int]) -> int:
    return sum(work)


@wide.invariant("INV-TOTAL", phase="total", description="the sum stays under 100")
def under_cap(out: int) -> tuple[bool, int, str]:
    return out < 100, out, "< 100"


diamond = Pipeline("diamond", version="1")
"""``a`` feeds ``b`` and ``c``, ``b`` feeds ``c``: the edge a -> c skips a column of the
DAG; ``notify`` is switched off, so it is skipped (``disabled``)."""


@diamond.phase(name="a")
def diamond_a(ctx: Context, input: int) -> int:
    return input


@diamond.phase(name="b")
def diamond_b(ctx: Context, a: int) -> int:
    return a + 1


@diamond.phase(name="c")
def diamond_c(ctx: Context, b: int, a: int) -> int:
    return a + b


@diamond.phase(name="notify", enabled=False)
def diamond_notify(ctx: Context, c: int) -> int:
    return c
