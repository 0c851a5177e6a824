"""Reading what replay needs from the bus: a run's (or the whole log's) records, and the
projection's state of each run to compare with the refold."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from sisas.bus.queries import ask
from sisas.bus.runtime import Bus
from sisas.errors import UnknownRun
from sisas.handlers.state import RunState, state_digest
from sisas.replay.verdicts import VerifyReport
from sisas.replay.verify import LogVerifier, Projected, report

__all__ = ["verify_log"]

Progress = Callable[[str, int, int], None]


async def verify_log(
    bus: Bus,
    run_id: str | None,
    *,
    trusted: frozenset[str] = frozenset(),
    projection: bool = True,
    on_progress: Progress | None = None,
) -> VerifyReport:
    """Verify one run (or every run, ``run_id=None``) and compare with the projection."""
    verifier = LogVerifier(trusted=trusted, only=run_id)
    if run_id is not None:
        records = await bus.log.read_run(run_id)
        if not records:
            raise UnknownRun(f"no run {run_id!r} in the log; `sisas runs` lists them")
        verifier.extend(records)
    else:
        target = await bus.log.last_seq()
        n = 0
        async for record in bus.log.follow(live=False):
            verifier.add(record)
            n += 1
            if on_progress is not None and n % 5000 == 0:
                on_progress("verifying", verifier.stream_seq, target)
    projected = await _projected(bus, run_id, verifier, on_progress) if projection else None
    return report(verifier, projected)


async def _projected(
    bus: Bus, run_id: str | None, verifier: LogVerifier, on_progress: Progress | None
) -> dict[str, Projected]:
    """The projection's state digest of every run it can vouch for (it has applied the
    run's last signal); a run it has not caught up with yet is left out (not checked)."""
    digests: dict[str, str] = {}
    as_of = 0
    if run_id is not None:
        answer = await ask(bus, "states", {"run_ids": [run_id]}, on_progress=on_progress)
        as_of = answer.as_of
        digests = {e["run_id"]: e["digest"] for e in answer.result["states"]}
    else:
        after = ""
        while True:
            answer = await ask(bus, "states", {"after": after, "limit": 5000})
            as_of = answer.as_of if not after else min(as_of, answer.as_of)
            digests.update({e["run_id"]: e["digest"] for e in answer.result["states"]})
            after = answer.result["next"]
            if not after:
                break
    out: dict[str, Projected] = {}
    for rid, v in verifier.runs.items():
        if v.last_stream_seq > as_of:
            continue  # the projection is behind this run: nothing to compare yet
        digest = digests.get(rid)
        state = None
        if digest is not None and digest != state_digest(v.state):
            full = await ask(bus, "states", {"run_ids": [rid], "full": True})
            raw = full.result["states"][0]["state"] if full.result["states"] else None
            if raw is not None:
                state = msgspec.json.decode(msgspec.json.encode(raw), type=RunState)
        out[rid] = Projected(digest=digest, state=state)
    return out
