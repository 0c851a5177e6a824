"""Every JSON output of the projection has exactly the fields docs/projections.md lists."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from bench.synthetic import synthetic_runs
from examples.clustering import pipeline as clustering
from sisas.bus.memory_log import MemoryLog
from sisas.handlers.local import LocalRun
from sisas.projections.projector import Projector
from sisas.projections.store import ProjectionStore
from sisas.services.query import answer
from tests.runs import AT, POINTS

DOC = Path(__file__).parent.parent / "docs" / "projections.md"


def documented() -> dict[str, set[str]]:
    """Field names by object, from the ``#### object`` tables of the doc."""
    out: dict[str, set[str]] = {}
    for block in re.split(r"^#### ", DOC.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        out[name.strip()] = set(re.findall(r"^\| `([a-z_0-9]+)` \|", body, flags=re.M))
    return out


async def _ask(projector: Projector, verb: str, params: bytes = b"{}") -> Any:
    async def report(*_: object) -> None:
        return None

    reply = await answer(projector, verb, params, report=report, freshness=0)
    assert reply["ok"], reply
    return reply["result"]


async def test_the_outputs_carry_exactly_the_documented_fields() -> None:
    fields = documented()
    log = MemoryLog()
    for signals in synthetic_runs(12):
        await log.append(signals, expected_last_seq=0)
    local = LocalRun(clustering, "fan", at=AT, clock=time.perf_counter)
    local.start(POINTS, seed=1)
    local.run()
    await log.append(local.signals, expected_last_seq=0)
    store = ProjectionStore(None)
    projector = Projector(log, store, identity="mem")
    await projector.catch_up()

    for run in await _ask(projector, "runs"):
        assert set(run) == fields["run"]
    for run_id in ("fan", "run-0000010", "run-0000003"):
        shown = await _ask(projector, "show", f'{{"run_id": "{run_id}"}}'.encode())
        assert set(shown) == {"run", "phases", "checks", "links"}
        assert set(shown["run"]) == fields["run"]
        assert set(shown["links"]) == fields["links"]
        for phase in shown["phases"]:
            assert set(phase) == fields["phase"]
        for check in shown["checks"]:
            assert set(check) == fields["check"]
        m = await _ask(projector, "manifest", f'{{"run_id": "{run_id}"}}'.encode())
        assert set(m) == fields["manifest"]
        assert set(m["counters"]) == fields["counters"]
        assert set(m["chain"]) == fields["chain"]
        for phase in m["phases"]:
            assert set(phase) == fields["manifest phase"]
    stats = await _ask(projector, "stats")
    assert set(stats) == {"pipelines", "phases"}
    assert {frozenset(p) for p in stats["pipelines"]} == {frozenset(fields["pipeline stats"])}
    assert {frozenset(p) for p in stats["phases"]} == {frozenset(fields["phase stats"])}
    assert set(await _ask(projector, "rebuild")) == fields["rebuild result"]
    status = await _ask(projector, "status")
    assert set(status) | {"served_by"} == fields["status"]  # the CLI adds served_by
    store.close()
