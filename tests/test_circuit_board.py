"""Circuits shared between runs, on a real nats-server: what a decision changes is seen
by this orchestrator's next decisions at once, before it is stored, so failures of one
phase in many runs at once count one after another."""

from __future__ import annotations

from datetime import UTC, datetime

from sisas.bus.circuits import CircuitBoard
from sisas.bus.runtime import Bus
from sisas.handlers.circuit import Circuit, after_failure


async def test_noted_failures_count_before_they_are_stored(bus: Bus) -> None:
    board = CircuitBoard(bus.js, ttl=3600.0)
    at = datetime(2026, 12, 7, tzinfo=UTC)
    opened = []
    pending = []
    for _ in range(3):  # three runs fail "at once": each decides before any is stored
        current = (await board.get("p")).get("fragile", Circuit())
        new, did_open = after_failure(current, at, threshold=2)
        opened.append(did_open)
        board.note("p", {"fragile": new})
        pending.append({"fragile": new})
    assert opened == [False, True, False]  # the second failure opens it, once
    assert (await board.get("p"))["fragile"].failures == 3
    for changed in pending:
        await board.store("p", changed)
    other = CircuitBoard(bus.js)  # another orchestrator reads what was stored
    assert (await other.get("p"))["fragile"].failures == 3
    assert not board._noted  # stored: nothing is kept apart any more
