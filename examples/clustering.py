"""A small clustering pipeline: a DAG, contracts, an invariant, a retry and a fan-out.

    load ──▶ clean ──▶ score (fanned out over clean.values) ──▶ cluster ──▶ report
                └───────────────────────────────────────────────▶┘

`sisas run clustering --input examples/data/points.json --wait` runs it; the tests use
it too. Everything random comes from ctx.rng, so two runs with one seed agree exactly.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from sisas.pipeline import Context, HardFailure, Pipeline


class Points(BaseModel):
    """The run input: a name and the raw values (negative values are sensor errors)."""

    name: str = Field(min_length=1)
    values: list[float] = Field(min_length=2)
    k: int = Field(default=3, ge=1, le=10)


class Clusters(BaseModel):
    centers: list[float]
    weights: list[float]
    sizes: list[int]


class Report(BaseModel):
    name: str
    k: int
    summary: str


pipeline = Pipeline(
    "clustering", version="1.0", input=Points, description="k-means over one-dimensional values"
)


@pipeline.phase()
def load(ctx: Context, input: Points) -> Points:
    ctx.log.info("loaded %d values", len(input.values))
    return input


@pipeline.phase(retries=2, backoff=0.05)
def clean(ctx: Context, load: Points) -> list[float]:
    """Drop sensor errors (negative values)."""
    # A flaky source: the first attempt of every run fails when asked to.
    if ctx.config.get("clean.flaky") and ctx.attempt == 0:
        raise HardFailure("upstream source not ready yet", retryable=True)
    return [v for v in load.values if v >= 0]


@pipeline.phase(map_over="clean")
def score(ctx: Context, item: float) -> float:
    """Per value: a robust score (any worker may take any item)."""
    return round(math.log1p(item), 12)


@pipeline.phase(timeout=60)
def cluster(ctx: Context, load: Points, clean: list[float], score: list[float]) -> Clusters:
    if len(score) != len(clean):
        raise HardFailure("scores and values disagree")
    values = sorted(score)
    k = min(load.k, len(values))
    centers = sorted(ctx.rng.choice(values, size=k, replace=False).tolist())
    for _ in range(20):
        groups: list[list[float]] = [[] for _ in centers]
        for v in values:
            groups[min(range(len(centers)), key=lambda i: abs(v - centers[i]))].append(v)
        centers = [sum(g) / len(g) if g else c for g, c in zip(groups, centers, strict=True)]
        ctx.progress(_ + 1, 20)
    sizes = [len(g) for g in groups]
    total = sum(sizes)
    return Clusters(
        centers=[round(c, 12) for c in centers], weights=[s / total for s in sizes], sizes=sizes
    )


@pipeline.invariant("INV-7.1", phase="cluster", description="cluster weights sum to 1.0")
def weights_sum_to_one(out: Clusters) -> tuple[bool, float, float]:
    total = sum(out.weights)
    return abs(total - 1.0) < 1e-9, round(total, 12), 1.0


@pipeline.phase()
def report(ctx: Context, load: Points, clean: list[float], cluster: Clusters) -> Report:
    parts = ", ".join(
        f"{c:.3f} (n={n})" for c, n in zip(cluster.centers, cluster.sizes, strict=True)
    )
    dropped = len(load.values) - len(clean)
    return Report(
        name=load.name,
        k=len(cluster.centers),
        summary=f"{load.name}: {len(cluster.centers)} clusters: {parts}; {dropped} values dropped",
    )


@pipeline.phase(side_effects=True)
def publish(ctx: Context, report: Report) -> str:
    """Would post the report somewhere: disabled unless --set publish.enabled=true."""
    ctx.log.warning("publishing %s", report.summary)
    return report.summary
