"""Taxonomy build: a four-level hierarchy from a catalogue of noisy category paths.

    extract    S0  raw extraction: every record's path split into one mention per level
    normalise  S1  per-level normalisation, fanned out over levels 0-3 (one item each):
                   each level has its own rules (aliases for domains, singular forms,
                   compounds joined, qualifiers such as "(grey)" dropped from species)
    filter     S2  frequency filtering: terms and parent links seen fewer than
                   `filter.min_support` times (default 2) are dropped as noise
    verify     S3  verification: every term has exactly one parent, which exists one
                   level up (invariants TAX-PARENTS, TAX-SINGLE-PARENT)
    finalise       the hierarchy assembled as a tree, with counts (TAX-COMPLETE)

A phase whose output breaks an invariant fails, and its output is quarantined: kept as
an artifact named by ``phase_failed`` for inspection, never given to the next phase.
Resume from S2 (`--resume RUN --from filter`) reuses S0 and S1 and runs S2, S3 and
finalise again.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel, Field

from sisas.pipeline import Context, Pipeline

LEVELS = 4
_NAME = r"^[a-z0-9][a-z0-9 -]*$"


class Record(BaseModel):
    id: str = Field(min_length=1)
    path: str = Field(min_length=1)


class Catalogue(BaseModel):
    """The run input: records, each with a category path such as `Animals > Birds > Owl`."""

    name: str = Field(min_length=1)
    records: list[Record] = Field(min_length=1)


class Mention(BaseModel):
    record: str
    term: str
    parent: str | None


class LevelMentions(BaseModel):
    level: int = Field(ge=0, lt=LEVELS)
    mentions: list[Mention]


class Term(BaseModel):
    name: str = Field(pattern=_NAME)
    count: int = Field(ge=1)
    parents: dict[str, int]
    """Parent term (one level up) -> how many mentions named it."""
    variants: list[str]
    """The raw spellings normalised into this term."""


class Level(BaseModel):
    level: int = Field(ge=0, lt=LEVELS)
    terms: list[Term]


class Verified(BaseModel):
    levels: list[Level] = Field(min_length=LEVELS, max_length=LEVELS)
    orphans: list[str]
    """`level:term` whose parent is not a term one level up."""
    conflicts: list[str]
    """`level:term (parent, parent…)` named under more than one parent."""


class Node(BaseModel):
    name: str
    level: int
    count: int
    children: list[Node] = []


class Taxonomy(BaseModel):
    name: str
    roots: list[Node] = Field(min_length=1)
    terms_per_level: list[int]


pipeline = Pipeline(
    "taxonomy",
    version="1.0",
    input=Catalogue,
    description="A four-level taxonomy from noisy category paths (S0-S3, finalise)",
    default_input=Path(__file__).parent / "data" / "catalog.json",
)

_SPLIT = re.compile(r"\s*[>/]\s*")
_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")
_ALIASES = {"fauna": "animal", "flora": "plant"}


def singular(word: str) -> str:
    """`wolves` -> `wolf`, `canines` -> `canine`, `berries` -> `berry`; `moss` stays."""
    for plural, one in (("ves", "f"), ("ies", "y")):
        if word.endswith(plural) and len(word) > len(plural) + 2:
            return word[: -len(plural)] + one
    if word.endswith("s") and not word.endswith(("ss", "is", "us")) and len(word) > 3:
        return word[:-1]
    return word


def normalise(raw: str, level: int) -> str:
    """One spelling -> its term, by the rules of ``level``."""
    text = " ".join(raw.casefold().replace("&", " and ").split())
    if level == 3:
        text = _QUALIFIER.sub("", text)  # species: `wolf (grey)` -> `wolf`
    text = " ".join(singular(w) for w in text.split())
    if level == 0:
        text = _ALIASES.get(text, text)  # domains: synonyms
    if level == 2:
        text = text.replace(" ", "")  # groups: `song bird` -> `songbird`
    return text


@pipeline.phase()
def extract(ctx: Context, input: Catalogue) -> list[LevelMentions]:
    """S0: one mention per record and level; a path deeper than four levels is cut."""
    levels: list[list[Mention]] = [[] for _ in range(LEVELS)]
    for record in input.records:
        parts = [p for p in _SPLIT.split(record.path.strip()) if p][:LEVELS]
        for level, part in enumerate(parts):
            parent = parts[level - 1] if level else None
            levels[level].append(Mention(record=record.id, term=part, parent=parent))
    ctx.log.info("extracted %s mentions", [len(m) for m in levels])
    return [LevelMentions(level=i, mentions=m) for i, m in enumerate(levels)]


@pipeline.phase(name="normalise", map_over="extract")
def normalise_level(ctx: Context, item: LevelMentions) -> Level:
    """S1: one level's spellings folded into terms, each with its parents and counts."""
    counts: Counter[str] = Counter()
    parents: defaultdict[str, Counter[str]] = defaultdict(Counter)
    variants: defaultdict[str, set[str]] = defaultdict(set)
    for m in item.mentions:
        term = normalise(m.term, item.level)
        counts[term] += 1
        variants[term].add(m.term.strip())
        if m.parent is not None:
            parents[term][normalise(m.parent, item.level - 1)] += 1
    return Level(
        level=item.level,
        terms=[
            Term(
                name=name,
                count=counts[name],
                parents=dict(sorted(parents[name].items())),
                variants=sorted(variants[name]),
            )
            for name in sorted(counts)
        ],
    )


@pipeline.phase(name="filter")
def frequency_filter(ctx: Context, normalise: list[Level]) -> list[Level]:
    """S2: drop terms and parent links seen fewer than `filter.min_support` times."""
    min_support = int(ctx.config.get("filter.min_support", 2) or 1)
    kept = []
    for level in normalise:
        terms = [
            t.model_copy(
                update={"parents": {p: n for p, n in t.parents.items() if n >= min_support}}
            )
            for t in level.terms
            if t.count >= min_support
        ]
        dropped = len(level.terms) - len(terms)
        ctx.log.info("level %d: kept %d terms, dropped %d", level.level, len(terms), dropped)
        kept.append(Level(level=level.level, terms=terms))
    return kept


@pipeline.phase()
def verify(ctx: Context, filter: list[Level]) -> Verified:
    """S3: each term below the domains must name exactly one parent, one level up."""
    orphans, conflicts = [], []
    for level in filter:
        above = {t.name for t in filter[level.level - 1].terms} if level.level else set()
        for t in level.terms:
            if level.level and len(t.parents) > 1:
                conflicts.append(f"{level.level}:{t.name} ({', '.join(t.parents)})")
            missing = [p for p in t.parents if p not in above]
            if level.level and (missing or not t.parents):
                orphans.append(f"{level.level}:{t.name}")
    return Verified(levels=filter, orphans=orphans, conflicts=conflicts)


@pipeline.invariant("TAX-PARENTS", phase="verify", description="every parent exists one level up")
def parents_exist(v: Verified) -> tuple[bool, str, str]:
    return not v.orphans, ", ".join(v.orphans) or "none", "no orphans"


@pipeline.invariant(
    "TAX-SINGLE-PARENT", phase="verify", description="each term is under exactly one parent"
)
def single_parent(v: Verified) -> tuple[bool, str, str]:
    return not v.conflicts, "; ".join(v.conflicts) or "none", "one parent per term"


@pipeline.phase()
def finalise(ctx: Context, input: Catalogue, verify: Verified) -> Taxonomy:
    """The hierarchy: each term placed under its parent, children sorted by name."""
    by_level = {lv.level: lv.terms for lv in verify.levels}

    def children(level: int, parent: str) -> list[Node]:
        if level >= LEVELS:
            return []
        return [
            Node(name=t.name, level=level, count=t.count, children=children(level + 1, t.name))
            for t in by_level.get(level, [])
            if parent in t.parents
        ]

    roots = [
        Node(name=t.name, level=0, count=t.count, children=children(1, t.name))
        for t in by_level.get(0, [])
    ]
    return Taxonomy(
        name=input.name, roots=roots, terms_per_level=[len(by_level[i]) for i in range(LEVELS)]
    )


def _size(node: Node) -> int:
    return 1 + sum(_size(c) for c in node.children)


@pipeline.invariant(
    "TAX-COMPLETE", phase="finalise", description="every verified term is in the tree once"
)
def complete(t: Taxonomy) -> tuple[bool, int, int]:
    placed = sum(_size(r) for r in t.roots)
    return placed == sum(t.terms_per_level), placed, sum(t.terms_per_level)
