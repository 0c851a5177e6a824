"""Fan-outs decide, fold and verify as they did before the item table became a
persistent map: the same signals byte for byte at every size, the same state digest,
counts by status that match the items, retried and failed items, cancelled runs, a
fan-out that gathers another."""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from datetime import UTC, datetime

import pytest

from sisas.handlers.local import LocalRun
from sisas.handlers.orchestrator import decide
from sisas.handlers.state import PhaseState, RunState, evolve, fold, state_digest
from sisas.pipeline import Context, Pipeline
from sisas.projections.rows import decode_state, encode_state
from sisas.replay.verify import LogVerifier, report
from sisas.signals import PhaseScheduled, Signal, StoredSignal, encode_signal, semantic_digest
from sisas.signals.inputs import (
    CancelRun,
    ContractResult,
    InvariantResult,
    PhaseReport,
    StartRun,
)
from sisas.signals.kinds import ErrorInfo
from sisas.testing import run_pipeline
from tests.runs import AT, run_of, verify_signals

T0 = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)
CHUNK = 8
"""The made-up workers take up to 8 attempts at once, start them all, then report them
in reverse order: outcomes arrive out of item order, as they do from real workers."""


def fanned(partial: bool = True, gathers: bool = False) -> Pipeline:
    """``source`` -> ``work`` (a fan-out over its list) -> ``total``; with ``gathers``,
    ``spread``: a second fan-out over ``source`` whose every item receives ``work``."""
    pipe = Pipeline("fanned", version="1")

    @pipe.phase()
    def source(ctx: Context, input: int) -> list[int]:
        return list(range(input))

    @pipe.phase(map_over="source", retries=2, backoff=0.5, timeout=5, partial=partial)
    def work(ctx: Context, item: int) -> int:
        return item

    @pipe.phase()
    def total(ctx: Context, work: list[int | None]) -> int:
        return len(work)

    if gathers:

        @pipe.phase(map_over="source")
        def spread(ctx: Context, item: int, work: list[int | None]) -> int:
            return item

    return pipe


def _digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()


class Workers:
    """Drives ``decide`` for one run with made-up worker reports, no phase executed.

    Item ``i`` of ``work``: ``i % 7 == 3`` fails its first attempt (retryable), ``i %
    11 == 5`` times out on its first attempt, ``i % 13 == 6`` fails every attempt and for
    good (``fail_for_good``); every other attempt (any other phase's too) completes with
    an entry and an exit contract check and an invariant.
    """

    def __init__(self, pipe: Pipeline, run_id: str, *, fail_for_good: bool) -> None:
        self.plans = {pipe.name: pipe.plan()}
        self.state = RunState.new(pipe.name, run_id)
        self.signals: list[Signal] = []
        self.queue: deque[Signal] = deque()
        self.fail_for_good = fail_for_good
        self.n = 0

    def send(self, inp: object) -> None:
        new = decide(self.state, inp, self.plans)  # type: ignore[arg-type]
        for s in new:
            self.state = evolve(self.state, s)
            if isinstance(s.body, PhaseScheduled):
                self.queue.append(s)
        self.signals.extend(new)

    def report(self, s: Signal, status: str, **kw: object) -> None:
        self.n += 1
        item = s.body.item  # type: ignore[union-attr]
        self.send(
            PhaseReport(
                id=f"{self.state.run_id}:{self.n}",
                pipeline=self.state.pipeline,
                run_id=self.state.run_id,
                at=T0,
                phase=s.phase,
                attempt=s.attempt,
                item=item,
                worker=f"w{(item or 0) % 3}",
                status=status,  # type: ignore[arg-type]
                **kw,  # type: ignore[arg-type]
            )
        )

    def outcome(self, s: Signal, items: int) -> None:
        item, attempt = s.body.item, s.attempt  # type: ignore[union-attr]
        i = item if item is not None and s.phase == "work" else -1  # only work's items fail
        entry = ContractResult(contract="item:int", boundary="entry", passed=True)
        if i % 13 == 6 and self.fail_for_good:
            error = ErrorInfo(kind="HardFailure", message=f"item {item} never works")
            self.report(s, "failed", error=error, duration=0.25, contracts=[entry])
        elif attempt == 0 and i % 7 == 3:
            error = ErrorInfo(kind="HardFailure", message="flaky", retryable=True)
            self.report(s, "failed", error=error, duration=0.5, contracts=[entry])
        elif attempt == 0 and i % 11 == 5:
            self.report(s, "timed_out", duration=5.0)
        else:
            self.report(
                s,
                "completed",
                output_digest=_digest(s.phase, item, "out"),
                artifact=_digest(s.phase, item, "artifact"),
                duration=0.125 * ((item or 0) % 5),
                item_count=items if s.phase == "source" else None,
                contracts=[entry, ContractResult(contract="int", boundary="exit", passed=True)],
                invariants=[InvariantResult(invariant="INV-POS", passed=True, observed=item)],
            )

    def run(self, items: int, *, cancel_after: int | None = None) -> list[Signal]:
        rid = self.state.run_id
        self.send(
            StartRun(
                id=f"{rid}:start",
                pipeline="fanned",
                run_id=rid,
                at=T0,
                seed=11,
                input_digest=_digest(items),
            )
        )
        done = 0
        while self.queue and not self.state.ended:
            if cancel_after is not None and done >= cancel_after:
                self.send(CancelRun(id=f"{rid}:cancel", pipeline="fanned", run_id=rid, at=T0))
                break
            batch = [self.queue.popleft() for _ in range(min(CHUNK, len(self.queue)))]
            for s in batch:
                self.report(s, "started")
            for s in reversed(batch):
                self.outcome(s, items)
            done += len(batch)
        return self.signals


def drive(case: str, items: int) -> list[Signal]:
    """The log of one made-up run: ``partial`` (items failing for good are left out),
    ``strict`` (one failing for good fails the run), ``cancel`` (cancelled midway) or
    ``gathers`` (a second fan-out receives the first's outputs)."""
    pipe = fanned(partial=case != "strict", gathers=case == "gathers")
    w = Workers(pipe, f"{case}-{items}", fail_for_good=case in ("partial", "strict"))
    return w.run(items, cancel_after=items // 2 if case == "cancel" else None)


# What the same runs decided before the item and check tables became persistent maps
# (commit f472876): sha256 of the signals' wire bytes, the state digest, the count.
BEFORE = {
    ("partial", 0): (
        "f6117c74594fd5362d1650d4964b750eccb1765d4708a955312db8ae8ab90dde",
        "f10e3d6c66d6585c332d070482d6fc242d5a93fee00f63d390d384d17f8b2770",
        16,
    ),
    ("partial", 1): (
        "32e4320e32d10fd50305e95a0c2bf2ade56f3b0d352f3950ed7af846fc853dee",
        "825d3da19e249524777c1165fd1ddd465018a075b83f7c98ac6771fbf17f35c4",
        22,
    ),
    ("partial", 31): (
        "660efe2e87a96635ffdbbad585f760aebf57fc8bde03da8c97df872caa001205",
        "cde6b84a3eeaa86c7f46f5e6b758bdb8b2a600bacaa0ab36e35c2e7f639bd0df",
        230,
    ),
    ("partial", 32): (
        "c18bf0b398ff05530c049fd7716eeccf66976c2418f2973bb309e29aa2b46035",
        "93661608c9558beb3b146f06d702ae7e579903fdd72b1d57241985d984b9d199",
        241,
    ),
    ("partial", 33): (
        "c5e2e30fcdad719934721956176e521446315807a0295a5d400803c2039c0a4b",
        "e2d4f651040c31a990e14644d6177eed87ceae041099ae7ae260e6bc55b1242b",
        245,
    ),
    ("partial", 100): (
        "fb3ac6bb4d6d823a1ada4f027b3aa55a9bb4501a3d92e1149ff24906bfafebc6",
        "5017f5375d3f7698bc2147cf61bc20f77c9c78e5a7a5daf43de777bbeb8887c0",
        693,
    ),
    ("partial", 1100): (
        "4a4e184a1e77147b410c35d8fbb15cbe9f898d6b7963804b4c6e9af04c072dcd",
        "18639459c3a23c65254c317289f6255066ea81e0e6405f99967fa694c79e3b7f",
        7487,
    ),
    ("strict", 100): (
        "735aebb4069b6ac0578736d5f797ecbbd6ba7bff35b4e0695b373471a15f5010",
        "11bafd9c5ce5fc76c9c33614d95745661b7ae3837858778b8f3165e0e7fcb468",
        123,
    ),
    ("cancel", 100): (
        "94c650d86446b10961f0e80692f291c0752bb428fbad14f2c1f1c4418f3015ca",
        "b7e4644cd6c68f4d9a3f4fc759b5d9b23cb70bc60e56b6c97b1b086675cc8807",
        385,
    ),
    ("gathers", 40): (
        "3d5867845c1815d9a2b0e95e93b667579388393f5367e52f4a44d31859299db7",
        "c83aac0195c5698587cca3a0b7af4603fe54560a9663716b6be02c1c042c5d49",
        539,
    ),
}


def _fingerprint(signals: list[Signal]) -> tuple[str, str, int]:
    wire = hashlib.sha256(b"".join(encode_signal(s) + b"\n" for s in signals)).hexdigest()
    return wire, state_digest(fold(signals)), len(signals)


@pytest.mark.parametrize(("case", "items"), sorted(BEFORE))
def test_the_signals_and_state_are_those_decided_before(case: str, items: int) -> None:
    signals = drive(case, items)
    assert _fingerprint(signals) == BEFORE[(case, items)]
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(signals, 1)]
    verdict = report(LogVerifier().extend(records))
    assert verdict.intact, verdict.runs


def _recount(ps: PhaseState) -> dict[str, int]:
    counts: dict[str, int] = {}
    for it in ps.item_states.values():
        counts[it.status] = counts.get(it.status, 0) + 1
    return counts


STATUSES = ("scheduled", "running", "retrying", "completed", "failed", "timed_out", "cancelled")


@pytest.mark.parametrize("case", ["partial", "strict", "cancel"])
def test_the_counts_by_status_match_the_items_after_every_signal(case: str) -> None:
    state: RunState | None = None
    for s in drive(case, 60):
        state = evolve(state or RunState.new(s.pipeline, s.run_id), s)
        ps = state.phase("work")
        counts = _recount(ps)
        assert {st: ps.item_states.count(st) for st in STATUSES} == {
            st: counts.get(st, 0) for st in STATUSES
        }
    assert (
        state is not None
        and state.status
        == {
            "partial": "completed",
            "strict": "failed",
            "cancel": "cancelled",
        }[case]
    )


def test_a_partial_fan_out_gathers_its_items_and_leaves_out_those_that_failed() -> None:
    state = fold(drive("partial", 100))
    ps = state.phase("work")
    assert state.status == "completed" and ps.status == "completed" and ps.item_count == 100
    failed = [i for i in range(100) if i % 13 == 6]
    assert [i for i, it in ps.item_states.items() if it.status == "failed"] == failed
    assert ps.item_states.count("completed") == 100 - len(failed)
    retried = [i for i, it in ps.item_states.items() if it.attempt == 1]
    assert retried == [i for i in range(100) if i not in failed and (i % 7 == 3 or i % 11 == 5)]
    expected = ["" if i in failed else _digest("work", i, "out") for i in range(100)]
    assert ps.output_digest == semantic_digest(expected)
    assert ps.duration == sum(0.125 * (i % 5) for i in range(100) if i not in failed)
    assert list(ps.item_states) == list(range(100))  # item order, as the dict had it


def test_a_run_that_fails_or_is_cancelled_settles_the_items_in_flight() -> None:
    failed = fold(drive("strict", 100))
    assert (failed.status, failed.failed_phase) == ("failed", "work")
    items = failed.phase("work").item_states
    assert items.count("scheduled", "running", "retrying") == 0
    assert items.count("cancelled") > 0 and items.count("pending") == 0
    cancelled = fold(drive("cancel", 100))
    assert cancelled.status == "cancelled"
    items = cancelled.phase("work").item_states
    assert items.count("cancelled") == 100 - items.count("completed", "failed")


def test_a_fan_out_that_gathers_another_receives_all_its_outputs_in_order() -> None:
    signals = drive("gathers", 40)
    spread = [s for s in signals if s.phase == "spread" and isinstance(s.body, PhaseScheduled)]
    assert len(spread) == 40
    expected = [_digest("work", i, "artifact") for i in range(40)]
    for s in spread:
        assert s.body.gathered == {"work": expected}  # type: ignore[union-attr]
    assert fold(signals).status == "completed"


def test_a_state_is_stored_and_read_back_as_it_was() -> None:
    for case in ("partial", "cancel"):
        state = fold(drive(case, 70))
        back = decode_state(encode_state(state))
        assert back == state and state_digest(back) == state_digest(state)
        assert back.phase("work").item_states.count("completed") == state.phase(
            "work"
        ).item_states.count("completed")
        # Stored as a dict was: items by number (as text), in item order.
        stored = json.loads(encode_state(state))
        assert list(stored["phases"]["work"]["item_states"]) == [str(i) for i in range(70)]


@pytest.mark.parametrize("n", [0, 1, 32, 33, 300])
def test_in_process_fan_outs_give_every_item_s_output_in_order(n: int) -> None:
    pipe = Pipeline("times", version="1")

    @pipe.phase()
    def source(ctx: Context, input: int) -> list[int]:
        return list(range(input))

    @pipe.phase(map_over="source")
    def tenfold(ctx: Context, item: int) -> int:
        return item * 10

    @pipe.phase()
    def total(ctx: Context, tenfold: list[int]) -> list[int]:
        return tenfold

    run = run_of(pipe, str(n).encode())
    assert run.state.status == "completed"
    [done] = [s.body for s in run.signals if s.phase == "total" and s.kind == "phase_completed"]
    assert json.loads(run.artifacts[done.artifact]) == [i * 10 for i in range(n)]  # type: ignore[union-attr]
    assert run.state.phase("tenfold").item_states.count("completed") == n


def _pending_by_scan(run: LocalRun) -> list[Signal]:
    """LocalRun.pending_work as it was: a scan of the whole log."""
    out = []
    for s in run.signals:
        if isinstance(s.body, PhaseScheduled):
            ps = run.state.phase(s.phase)
            st = ps.item_states.get(s.body.item) if s.body.item is not None else ps
            if st is not None and st.status == "scheduled" and st.attempt == s.attempt:
                out.append(s)
    return out


def test_local_pending_work_is_what_a_scan_of_the_log_finds() -> None:
    pipe = Pipeline("flaky", version="1")

    @pipe.phase()
    def source(ctx: Context, input: int) -> list[int]:
        return list(range(input))

    @pipe.phase(map_over="source", retries=2, backoff=0.01, partial=True)
    def work(ctx: Context, item: int) -> int:
        if (item % 4 == 1 and ctx.attempt == 0) or item % 9 == 2:
            raise RuntimeError("not now")
        return item

    @pipe.phase()
    def total(ctx: Context, work: list[int | None]) -> int:
        return len(work)

    run = LocalRun(pipe, "p1", at=AT, clock=lambda: 0.0)
    run.start(b"40")
    steps = 0
    while not run.state.ended:
        pending = run.pending_work()
        assert pending == _pending_by_scan(run)
        if not pending:
            break
        run.work(pending[len(pending) // 2])  # out of log order too
        steps += 1
    assert run.state.status == "completed" and steps > 40


def _nested() -> Pipeline:
    nested = Pipeline("nested", version="1")

    @nested.phase()
    def numbers(ctx: Context, input: int) -> list[int]:
        return list(range(input))

    @nested.phase(map_over="numbers")
    def doubled(ctx: Context, item: int) -> int:
        return item * 2

    @nested.phase(map_over="doubled")
    def plus_one(ctx: Context, item: int) -> int:
        return item + 1

    @nested.phase()
    def total(ctx: Context, plus_one: list[int]) -> int:
        return sum(plus_one)

    return nested


def test_a_fan_out_over_a_fan_outs_items_gets_each_item() -> None:
    """``map_over`` a phase that is itself a fan-out: item i is that fan-out's item i
    (the worker read the list from the wrong place and failed every item)."""
    result = run_pipeline(_nested(), 5, seed=1)
    result.raise_for_status()
    assert result.output("plus_one") == [1, 3, 5, 7, 9]
    assert result.output("total") == 25


def test_a_run_resumed_after_a_list_phase_fans_out_over_the_reused_list() -> None:
    """Resuming from a fan-out phase reuses its upstream list: the resumed skip carries
    the list's length, or the fan-out saw "not a list" and failed (and verify then
    flagged the run sisas wrote itself)."""
    from sisas.handlers.local import LocalRun
    from sisas.signals.inputs import Reuse, StartRun

    pipe = _nested()
    first = LocalRun(pipe, "r1", at=datetime(2026, 1, 2, tzinfo=UTC), clock=time.perf_counter)
    first.start(b"4", seed=1)
    done = first.run()
    assert done.status == "completed"
    numbers = done.phase("numbers")
    again = LocalRun(pipe, "r2", at=datetime(2026, 1, 2, tzinfo=UTC), clock=time.perf_counter)
    again.artifacts.update(first.artifacts)
    input_digest = next(iter(first.artifacts))
    again.send(
        StartRun(
            id="start:r2",
            pipeline=pipe.name,
            run_id="r2",
            at=datetime(2026, 1, 2, tzinfo=UTC),
            seed=1,
            input_digest=input_digest,
            resume_of="r1",
            reuse={
                "numbers": Reuse(
                    output_digest=numbers.output_digest,
                    artifact=numbers.artifact,
                    item_count=numbers.item_count,
                )
            },
        )
    )
    state = again.run()
    assert state.status == "completed", state.error
    assert state.phase("numbers").status == "skipped"
    assert state.phase("doubled").item_count == 4
    assert verify_signals(again.signals).intact
