"""Script lighting: a script parsed into scenes, each lit, queued for visualisation.

    parse      the script into scenes (INT./EXT. headings)
    light      per scene (fanned out): an optional emotion enrichment, which is non-fatal
               (a scene it cannot read is lit neutrally and says why), then lighting
               cues under an output contract: intensity in [0, 1], a group id on every group
    queue      visualisation jobs, one per scene, in scene order
    metrics    scenes, enrichment coverage (invariant ENRICH-COVERAGE), mean intensity
    hardware   sends the cues to the lighting desk: side effects, so it is skipped unless
               the run says `--set hardware.enabled=true`

Batch mode: `sisas batch examples.script_lighting --inputs examples/script_lighting/data/scripts`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from sisas.pipeline import Context, Pipeline


class Script(BaseModel):
    title: str = Field(min_length=1)
    text: str = Field(min_length=1)


class Scene(BaseModel):
    number: int = Field(ge=1)
    heading: str
    text: str


class Group(BaseModel):
    id: str = Field(min_length=1)
    intensity: float = Field(ge=0.0, le=1.0)
    color: str = Field(pattern=r"^#[0-9a-f]{6}$")


class Lighting(BaseModel):
    scene: int
    emotion: str
    enrichment: str
    """``ok``, or why the enrichment failed (the scene was lit neutrally)."""
    groups: list[Group] = Field(min_length=1)


class Job(BaseModel):
    id: str
    scene: int
    cues: int


class Metrics(BaseModel):
    scenes: int
    enriched: int
    mean_intensity: float


class HardwareReport(BaseModel):
    sent: int
    desk: str


pipeline = Pipeline(
    "script_lighting",
    version="1.0",
    input=Script,
    default_input=Path(__file__).parent / "data" / "scripts" / "storm.json",
)

_HEADING = re.compile(r"^(INT\.|EXT\.)\s.*$", re.MULTILINE)
_EMOTIONS = {
    "fear": ("afraid", "fear", "thunder", "flicker"),
    "anger": ("angry", "furious", "rage"),
    "joy": ("joy", "warm", "relief", "calm"),
    "sadness": ("sad", "tears", "silence"),
}
_PALETTE = {
    "fear": ("#1b2a49", 0.25),
    "anger": ("#b3261e", 0.8),
    "joy": ("#ffd27f", 0.9),
    "sadness": ("#5b6c8f", 0.35),
    "neutral": ("#f0f0f0", 0.6),
}


class EnrichmentUnavailable(Exception):
    """The emotion model could not read the scene."""


def enrich(scene: Scene) -> str:
    """The dominant emotion of a scene (a keyword model standing in for a real one)."""
    if "[[" in scene.text:
        raise EnrichmentUnavailable(f"scene {scene.number} holds unreadable markup")
    text = scene.text.lower()
    counts = {e: sum(text.count(w) for w in words) for e, words in _EMOTIONS.items()}
    best = max(counts, key=lambda e: (counts[e], e))
    return best if counts[best] else "neutral"


@pipeline.phase()
def parse(ctx: Context, input: Script) -> list[Scene]:
    """Split at INT./EXT. headings."""
    heads = list(_HEADING.finditer(input.text))
    return [
        Scene(
            number=i + 1,
            heading=m.group(0).strip(),
            text=input.text[m.end() : heads[i + 1].start() if i + 1 < len(heads) else None].strip(),
        )
        for i, m in enumerate(heads)
    ]


@pipeline.phase(map_over="parse")
def light(ctx: Context, item: Scene) -> Lighting:
    """Enrich (optional), then derive the scene's lighting groups."""
    try:
        emotion, enrichment = enrich(item), "ok"
    except EnrichmentUnavailable as exc:
        emotion, enrichment = "neutral", f"failed: {exc}"
        ctx.log.warning("scene %d lit without enrichment: %s", item.number, exc)
    color, base = _PALETTE[emotion]
    night = "NIGHT" in item.heading
    jitter = float(ctx.rng.uniform(-0.05, 0.05))
    key = round(min(1.0, max(0.0, base - (0.15 if night else 0.0) + jitter)), 4)
    return Lighting(
        scene=item.number,
        emotion=emotion,
        enrichment=enrichment,
        groups=[
            Group(id=f"s{item.number}-key", intensity=key, color=color),
            Group(id=f"s{item.number}-fill", intensity=round(key * 0.5, 4), color="#ffffff"),
            Group(id=f"s{item.number}-back", intensity=round(min(1.0, key * 1.2), 4), color=color),
        ],
    )


@pipeline.phase()
def queue(ctx: Context, light: list[Lighting]) -> list[Job]:
    return [
        Job(id=f"{ctx.run_id}-vis-{lt.scene}", scene=lt.scene, cues=len(lt.groups)) for lt in light
    ]


@pipeline.phase()
def metrics(ctx: Context, light: list[Lighting]) -> Metrics:
    intensities = [g.intensity for lt in light for g in lt.groups]
    return Metrics(
        scenes=len(light),
        enriched=sum(lt.enrichment == "ok" for lt in light),
        mean_intensity=round(sum(intensities) / max(len(intensities), 1), 4),
    )


@pipeline.invariant(
    "ENRICH-COVERAGE", phase="metrics", description="at least half the scenes were enriched"
)
def coverage(out: Metrics) -> tuple[bool, str, str]:
    return out.enriched * 2 >= out.scenes, f"{out.enriched}/{out.scenes}", ">= 50%"


@pipeline.phase(side_effects=True)
def hardware(ctx: Context, light: list[Lighting], queue: list[Job]) -> HardwareReport:
    """Send the cues to the lighting desk (here: count them); off unless enabled."""
    desk = str(ctx.config.get("hardware.desk", "desk-1"))
    return HardwareReport(sent=sum(len(lt.groups) for lt in light), desk=desk)
