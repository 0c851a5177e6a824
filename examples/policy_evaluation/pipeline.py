"""Policy evaluation, phases A-G, on a plan given as the run input.

    A route      30 base questions, each routed to a method; its arguments bound to the
                 method's signature (a question whose arguments do not fit is refused)
    B carve      30 base contracts x 10 policy areas = exactly 300 contracts; a gate
                 (invariant CARVE-300) fails the run if any is missing or invalid
    C quality    every contract scored on four criteria against the plan's thresholds
    D configure  executor timeouts, retries and memory limits, overridden by the run's
                 configuration (`--set executor.retries=3`), so overrides are recorded
    E registry   the signal-to-method registry, synchronised with the methods routed
    F execute    the 300 executors in chunks, fanned out (`map_over`), gathered in chunk
                 order: parallel equals serial
    G aggregate  4 clusters and one score, with INV-7.1 .. INV-7.5
      recommend  recommendations for weak clusters, behind an exit gate (REC-GATE)
      certify    the per-run certificate: which contracts and invariants held

Everything random comes from ``ctx.rng`` (seeded per phase and chunk); the evidence per
policy area is generated from the run seed, so two runs with one seed agree exactly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from sisas.pipeline import Context, HardFailure, Pipeline

DATA = Path(__file__).parent / "data"
CRITERIA = ("completeness", "specificity", "traceability", "feasibility")


class Area(BaseModel):
    id: str = Field(pattern=r"^PA\d{2}$")
    name: str


class Cluster(BaseModel):
    id: str
    areas: list[str] = Field(min_length=1)
    weight: float = Field(ge=0.0, le=1.0)


class Plan(BaseModel):
    """The run input: the plan under evaluation and its evaluation parameters."""

    plan: str = Field(min_length=1)
    areas: list[Area] = Field(min_length=10, max_length=10)
    clusters: list[Cluster] = Field(min_length=4, max_length=4)
    coherence_weights: dict[str, float]
    quality_thresholds: dict[str, float]
    recommendation_threshold: float = Field(ge=0.0, le=3.0)


class Route(BaseModel):
    question: str
    dimension: str
    method: str
    args: dict[str, Any]


class Routing(BaseModel):
    routes: list[Route]
    bank_digest: str


class Contract(BaseModel):
    id: str = Field(pattern=r"^Q\d{2}-PA\d{2}$")
    question: str
    area: str
    method: str
    args: dict[str, Any]


class Quality(BaseModel):
    scores: dict[str, dict[str, float]]
    thresholds: dict[str, float]
    below: list[str]


class ExecutorConfig(BaseModel):
    timeout: float = Field(gt=0)
    retries: int = Field(ge=0, le=10)
    memory_mb: int = Field(ge=64)
    chunk: int = Field(ge=1, le=300)


class Registry(BaseModel):
    methods: dict[str, str]
    signals: dict[str, str]


class Execution(BaseModel):
    contract: str
    area: str
    score: float
    evidence: int


class Aggregate(BaseModel):
    areas: dict[str, float]
    clusters: dict[str, float]
    weights: dict[str, float]
    coherence: float
    coherence_weights: dict[str, float]
    score: float
    thresholds_digest: str
    """Of the plan's thresholds as aggregation sees them."""
    quality_thresholds_digest: str
    """Of the thresholds the quality gate applied."""
    recomputed_digest: str
    digest: str


class Recommendation(BaseModel):
    cluster: str
    score: float
    text: str


class Certificate(BaseModel):
    plan: str
    score: float
    contracts: int
    contracts_valid: int
    quality_passed: int
    held: dict[str, bool]


pipeline = Pipeline(
    "policy_evaluation",
    version="1.0",
    input=Plan,
    description="A plan scored through 300 contracts (phases A-G)",
    default_input=DATA / "plan.json",
)


# -- the methods a question can be routed to ----------------------------------------


def coverage(evidence: list[float], *, min_sources: int) -> float:
    return 3.0 * min(1.0, sum(e > 0.5 for e in evidence) / max(min_sources, 1) / 2)


def consistency(evidence: list[float], *, tolerance: float) -> float:
    spread = max(evidence) - min(evidence) if evidence else 1.0
    return 3.0 * max(0.0, 1.0 - max(0.0, spread - tolerance))


def traceability(evidence: list[float], *, depth: int) -> float:
    linked = sorted(evidence, reverse=True)[:depth]
    return 3.0 * (sum(linked) / depth if depth else 0.0)


def budget_alignment(evidence: list[float], *, share: float) -> float:
    return 3.0 * min(1.0, (sum(evidence) / len(evidence)) / (0.5 + share))


def indicator_quality(evidence: list[float], *, baseline_required: bool) -> float:
    base = 0.8 if baseline_required else 1.0
    return 3.0 * base * (sum(e > 0.3 for e in evidence) / len(evidence))


METHODS: dict[str, Callable[..., float]] = {
    f.__name__: f
    for f in (coverage, consistency, traceability, budget_alignment, indicator_quality)
}


def _sha(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# -- A: routing -----------------------------------------------------------------------


@pipeline.phase()
def route(ctx: Context, input: Plan) -> Routing:
    """Route each base question to its method, binding its arguments to the signature."""
    bank = json.loads((DATA / "questions.json").read_text())["questions"]
    routes = []
    for q in bank:
        method = METHODS.get(q["method"])
        if method is None:
            raise HardFailure(f"question {q['id']} names no known method {q['method']!r}")
        try:
            inspect.signature(method).bind([0.0], **q["args"])
        except TypeError as exc:
            why = f"question {q['id']}: arguments do not fit {q['method']}: {exc}"
            raise HardFailure(why) from None
        routes.append(
            Route(question=q["id"], dimension=q["dimension"], method=q["method"], args=q["args"])
        )
    return Routing(routes=routes, bank_digest=_sha(bank))


@pipeline.invariant("ROUTE-30", phase="route", description="all 30 base questions routed")
def all_routed(out: Routing) -> tuple[bool, int, int]:
    return len({r.question for r in out.routes}) == 30, len(out.routes), 30


# -- B: contract carving ----------------------------------------------------------------


@pipeline.phase()
def carve(ctx: Context, input: Plan, route: Routing) -> list[Contract]:
    """One contract per base question and policy area: 30 x 10."""
    return [
        Contract(
            id=f"{r.question}-{a.id}", question=r.question, area=a.id, method=r.method, args=r.args
        )
        for r in route.routes
        for a in input.areas
    ]


@pipeline.invariant("CARVE-300", phase="carve", description="exactly 300 distinct, valid contracts")
def carved_300(out: list[Contract]) -> tuple[bool, int, int]:
    ids = {c.id for c in out}
    valid = all(c.method in METHODS for c in out)
    return len(ids) == 300 and len(out) == 300 and valid, len(ids), 300


# -- C: quality gate ------------------------------------------------------------------


@pipeline.phase()
def quality(ctx: Context, input: Plan, carve: list[Contract]) -> Quality:
    """Score every contract on four criteria; list those below a threshold."""
    scores: dict[str, dict[str, float]] = {}
    for c in carve:
        h = int(hashlib.sha256(c.id.encode()).hexdigest()[:8], 16)
        scores[c.id] = {
            k: round(0.5 + ((h >> (4 * i)) & 0xF) / 32, 6) for i, k in enumerate(CRITERIA)
        }
    below = sorted(
        cid
        for cid, s in scores.items()
        if any(s[k] < input.quality_thresholds.get(k, 0.0) for k in CRITERIA)
    )
    return Quality(scores=scores, thresholds=dict(input.quality_thresholds), below=below)


@pipeline.invariant("QUALITY-GATE", phase="quality", description="at least 90% of contracts pass")
def quality_gate(out: Quality) -> tuple[bool, float, float]:
    share = 1 - len(out.below) / max(len(out.scores), 1)
    return share >= 0.9, round(share, 6), 0.9


# -- D: executor configuration ----------------------------------------------------------


@pipeline.phase()
def configure(ctx: Context, input: Plan) -> ExecutorConfig:
    """Defaults, overridden by the run configuration (recorded in run_started)."""
    cfg = ctx.config
    return ExecutorConfig(
        timeout=float(cfg.get("executor.timeout", 30.0) or 30.0),
        retries=int(cfg.get("executor.retries", 2) or 0),
        memory_mb=int(cfg.get("executor.memory_mb", 512) or 512),
        chunk=int(cfg.get("executor.chunk", 25) or 25),
    )


# -- E: signal-to-method registry -----------------------------------------------------


@pipeline.phase()
def registry(ctx: Context, route: Routing) -> Registry:
    """Every routed method, by a digest of its signature; every evidence signal to its method."""
    used = sorted({r.method for r in route.routes})
    methods = {m: _sha(str(inspect.signature(METHODS[m]))) for m in used}
    signals = {f"evidence.{r.dimension}.{r.method}": r.method for r in route.routes}
    return Registry(methods=methods, signals=dict(sorted(signals.items())))


@pipeline.invariant("REGISTRY-SYNC", phase="registry", description="every signal maps to a method")
def registry_in_sync(out: Registry) -> bool:
    return all(m in out.methods for m in out.signals.values())


# -- F: chunked execution -------------------------------------------------------------


@pipeline.phase()
def chunks(ctx: Context, carve: list[Contract], configure: ExecutorConfig) -> list[list[Contract]]:
    """The 300 contracts in chunks of ``executor.chunk``, in contract order."""
    n = configure.chunk
    return [carve[i : i + n] for i in range(0, len(carve), n)]


@pipeline.phase(map_over="chunks")
def execute(
    ctx: Context, item: list[Contract], registry: Registry, configure: ExecutorConfig
) -> list[Execution]:
    """Run one chunk's executors: evidence drawn from ctx.rng, scored by the method."""
    out = []
    for i, c in enumerate(item):
        if c.method not in registry.methods:
            raise HardFailure(f"{c.id}: method {c.method} is not in the registry")
        evidence = [round(float(x), 6) for x in ctx.rng.beta(4.0, 2.0, size=6)]
        score = round(min(3.0, max(0.0, METHODS[c.method](evidence, **c.args))), 6)
        out.append(Execution(contract=c.id, area=c.area, score=score, evidence=len(evidence)))
        ctx.progress(i + 1, len(item))
    return out


# -- G: aggregation -------------------------------------------------------------------


def _aggregate(plan: Plan, executions: list[Execution]) -> dict[str, Any]:
    by_area: dict[str, list[float]] = {}
    for e in sorted(executions, key=lambda e: e.contract):
        by_area.setdefault(e.area, []).append(e.score)
    areas = {a: round(sum(v) / len(v), 6) for a, v in sorted(by_area.items())}
    clusters = {
        c.id: round(sum(areas[a] for a in c.areas) / len(c.areas), 6) for c in plan.clusters
    }
    weights = {c.id: c.weight for c in plan.clusters}
    within = sum(clusters[c] * w for c, w in weights.items())
    spread = max(clusters.values()) - min(clusters.values())
    across = 3.0 * (1 - spread / 3.0)
    cw = plan.coherence_weights
    coherence = round(
        cw.get("within_cluster", 0) * within + cw.get("across_clusters", 0) * across, 6
    )
    score = round(min(3.0, max(0.0, 0.8 * within + 0.2 * coherence)), 6)
    return {
        "areas": areas,
        "clusters": clusters,
        "weights": weights,
        "coherence": coherence,
        "coherence_weights": dict(cw),
        "score": score,
    }


@pipeline.phase()
def aggregate(
    ctx: Context, input: Plan, quality: Quality, execute: list[list[Execution]]
) -> Aggregate:
    """Areas, 4 clusters and one score in [0, 3]; computed twice to prove it deterministic."""
    flat = [e for chunk in execute for e in chunk]
    first = _aggregate(input, flat)
    again = _aggregate(input, list(reversed(flat)))  # any order in, the same result out
    return Aggregate(
        **first,
        thresholds_digest=_sha(input.quality_thresholds),
        quality_thresholds_digest=_sha(quality.thresholds),
        recomputed_digest=_sha(again),
        digest=_sha(first),
    )


@pipeline.invariant("INV-7.1", phase="aggregate", description="cluster weights sum to 1.0")
def cluster_weights(out: Aggregate) -> tuple[bool, float, float]:
    total = round(sum(out.weights.values()), 12)
    return math.isclose(total, 1.0, abs_tol=1e-9), total, 1.0


@pipeline.invariant(
    "INV-7.2", phase="aggregate", description="quality thresholds unchanged during the run"
)
def thresholds_immutable(out: Aggregate) -> bool:
    return out.thresholds_digest == out.quality_thresholds_digest


@pipeline.invariant("INV-7.3", phase="aggregate", description="every score in [0.0, 3.0]")
def scores_in_range(out: Aggregate) -> tuple[bool, float, str]:
    values = [out.score, *out.areas.values(), *out.clusters.values()]
    worst = min(values) if min(values) < 0 else max(values)
    return all(0.0 <= v <= 3.0 for v in values), worst, "[0.0, 3.0]"


@pipeline.invariant("INV-7.4", phase="aggregate", description="coherence weights sum to 1.0")
def coherence_weights(out: Aggregate) -> tuple[bool, float, float]:
    total = round(sum(out.coherence_weights.values()), 12)
    return math.isclose(total, 1.0, abs_tol=1e-9), total, 1.0


@pipeline.invariant("INV-7.5", phase="aggregate", description="aggregation is deterministic")
def deterministic(out: Aggregate) -> bool:
    return out.digest == out.recomputed_digest


# -- recommendations (exit gate) and the certificate ----------------------------------


@pipeline.phase()
def recommend(ctx: Context, input: Plan, aggregate: Aggregate) -> list[Recommendation]:
    """A recommendation for every cluster scoring under the plan's threshold."""
    return [
        Recommendation(
            cluster=c,
            score=s,
            text=f"cluster {c} scores {s:.2f} < {input.recommendation_threshold}: "
            "strengthen its indicators and budget traceability",
        )
        for c, s in sorted(aggregate.clusters.items())
        if s < input.recommendation_threshold
    ]


@pipeline.invariant("REC-GATE", phase="recommend", description="exit gate: valid recommendations")
def exit_gate(out: list[Recommendation]) -> tuple[bool, int, str]:
    ok = all(r.cluster.startswith("C") and 0.0 <= r.score <= 3.0 and r.text for r in out)
    return ok, len(out), "each names a cluster with a score in [0, 3]"


@pipeline.phase()
def certify(
    ctx: Context,
    input: Plan,
    carve: list[Contract],
    quality: Quality,
    aggregate: Aggregate,
    recommend: list[Recommendation],
) -> Certificate:
    """Which contracts and invariants held, recomputed from the phases' outputs."""
    held = {
        "CARVE-300": carved_300(carve)[0],
        "QUALITY-GATE": quality_gate(quality)[0],
        "INV-7.1": cluster_weights(aggregate)[0],
        "INV-7.2": thresholds_immutable(aggregate),
        "INV-7.3": scores_in_range(aggregate)[0],
        "INV-7.4": coherence_weights(aggregate)[0],
        "INV-7.5": deterministic(aggregate),
        "REC-GATE": exit_gate(recommend)[0],
    }
    return Certificate(
        plan=input.plan,
        score=aggregate.score,
        contracts=len(carve),
        contracts_valid=sum(c.method in METHODS for c in carve),
        quality_passed=len(quality.scores) - len(quality.below),
        held=held,
    )
