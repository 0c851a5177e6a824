"""One contract for every SignalLog adapter; subclassed per adapter (memory, JetStream).

Subclasses provide a ``log`` fixture and an ``inject`` fixture that stores raw bytes on
a subject with no checks (how a buggy or hostile publisher would).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from sisas.bus.log import SignalLog
from sisas.errors import AppendConflict, UsageError
from sisas.signals import (
    ChainHead,
    CorruptMessage,
    Draft,
    LogRecord,
    PhaseScheduled,
    PhaseStarted,
    RunRequested,
    Signal,
    StoredSignal,
    encode_signal,
)
from tests.conftest import AT

Inject = Callable[[str, bytes], Awaitable[None]]


def run_signals(run_id: str, n: int, pipeline: str = "pipe") -> list[Signal]:
    drafts = [Draft(body=RunRequested(seed=1), at=AT)] + [
        Draft(body=PhaseScheduled(seed=i), phase=f"p{i}", at=AT) for i in range(1, n)
    ]
    return ChainHead(pipeline=pipeline, run_id=run_id).extend(drafts)[0]


def signals_of(records: list[StoredSignal | CorruptMessage] | list[LogRecord]) -> list[Signal]:
    return [r.signal for r in records if isinstance(r, StoredSignal)]


async def collect(log: SignalLog, **kw: object) -> list[LogRecord]:
    return [r async for r in log.follow(**kw)]  # type: ignore[arg-type]


class LogContract:
    async def test_append_to_a_new_run_and_read_it_back_in_order(self, log: SignalLog) -> None:
        sigs = run_signals("r1", 3)
        result = await log.append(sigs, expected_last_seq=0)
        assert (result.first_seq, result.last_seq, result.duplicates) == (1, 3, 0)
        assert signals_of(await log.read_run("r1")) == sigs
        last = await log.last_of_run("r1")
        assert isinstance(last, StoredSignal)
        assert (last.stream_seq, last.signal) == (3, sigs[-1])
        assert await log.last_seq() == 3

    async def test_appending_the_same_signals_again_is_a_no_op(self, log: SignalLog) -> None:
        sigs = run_signals("r1", 3)
        await log.append(sigs, expected_last_seq=0)
        again = await log.append(sigs, expected_last_seq=0)
        assert (again.first_seq, again.last_seq, again.duplicates) == (1, 3, 3)
        assert await log.last_seq() == 3

    async def test_a_retry_that_half_landed_appends_only_the_missing_part(
        self, log: SignalLog
    ) -> None:
        sigs = run_signals("r1", 4)
        await log.append(sigs[:2], expected_last_seq=0)
        result = await log.append(sigs, expected_last_seq=0)
        assert (result.last_seq, result.duplicates) == (4, 2)
        assert signals_of(await log.read_run("r1")) == sigs

    async def test_a_stale_expectation_is_a_conflict_and_stores_nothing(
        self, log: SignalLog
    ) -> None:
        sigs = run_signals("r1", 2)
        await log.append(sigs, expected_last_seq=0)
        rival, _ = ChainHead.after(sigs[0]).extend(
            [Draft(body=PhaseStarted(worker="w"), phase="p1", at=AT)]
        )
        with pytest.raises(AppendConflict, match="another writer") as err:
            await log.append(rival, expected_last_seq=1)
        assert (err.value.expected_last_seq, err.value.actual_last_seq) == (1, 2)
        assert signals_of(await log.read_run("r1")) == sigs

    async def test_concurrent_writers_of_one_run_have_exactly_one_winner(
        self, log: SignalLog
    ) -> None:
        base = run_signals("r1", 1)
        await log.append(base, expected_last_seq=0)
        candidates = [
            ChainHead.after(base[0]).extend(
                [Draft(body=PhaseStarted(worker=f"w{i}"), phase="a", at=AT)]
            )[0]
            for i in range(8)
        ]
        results = await asyncio.gather(
            *(log.append(c, expected_last_seq=1) for c in candidates), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        assert all(isinstance(r, AppendConflict) for r in results if isinstance(r, BaseException))
        assert len(await log.read_run("r1")) == 2

    async def test_runs_are_independent(self, log: SignalLog) -> None:
        a, b = run_signals("ra", 2), run_signals("rb", 2, pipeline="other")
        await log.append(a[:1], expected_last_seq=0)
        await log.append(b[:1], expected_last_seq=0)
        await log.append(a[1:], expected_last_seq=1)
        await log.append(b[1:], expected_last_seq=2)
        assert signals_of(await log.read_run("ra")) == a
        assert signals_of(await log.read_run("rb")) == b
        assert await log.last_of_run("nope") is None
        assert await log.read_run("nope") == []

    async def test_an_append_must_be_one_consecutive_run(self, log: SignalLog) -> None:
        a, b = run_signals("ra", 3), run_signals("rb", 1)
        with pytest.raises(UsageError, match="single run"):
            await log.append([a[0], b[0]], expected_last_seq=0)
        with pytest.raises(UsageError, match="consecutive"):
            await log.append([a[0], a[2]], expected_last_seq=0)
        with pytest.raises(UsageError):
            await log.append([], expected_last_seq=0)
        assert await log.last_seq() == 0

    async def test_follow_reads_the_whole_log_and_stops_at_its_end(self, log: SignalLog) -> None:
        a, b = run_signals("ra", 2), run_signals("rb", 3)
        await log.append(a, expected_last_seq=0)
        await log.append(b, expected_last_seq=0)
        records = await collect(log)
        assert [r.stream_seq for r in records if isinstance(r, StoredSignal)] == [1, 2, 3, 4, 5]
        assert signals_of(records) == a + b
        assert [r.stream_seq for r in await collect(log, from_seq=4)] == [4, 5]  # type: ignore[union-attr]
        assert await collect(log, from_seq=6) == []

    async def test_follow_live_sees_later_appends(self, log: SignalLog) -> None:
        sigs = run_signals("r1", 3)
        await log.append(sigs[:1], expected_last_seq=0)
        seen: list[LogRecord] = []

        async def tail() -> None:
            async for rec in log.follow(live=True):
                seen.append(rec)
                if len(seen) == 3:
                    return

        task = asyncio.create_task(tail())
        await asyncio.sleep(0.05)
        await log.append(sigs[1:], expected_last_seq=1)
        await asyncio.wait_for(task, 10)
        assert signals_of(seen) == sigs

    async def test_bad_messages_are_reported_with_their_sequence_and_never_stop_a_reader(
        self, log: SignalLog, inject: Inject
    ) -> None:
        sigs = run_signals("r1", 2)
        await log.append(sigs[:1], expected_last_seq=0)
        await inject("sisas.run.pipe.r1._.run_requested", b"\xff\x00not json")
        tampered = msgspec.structs.replace(sigs[1], attempt=9)
        await inject("sisas.run.pipe.r1.p1.phase_scheduled", encode_signal(tampered))
        await inject("sisas.run.pipe.r1._.bogus", b'{"kind": "run_requested"}')
        records = await collect(log)
        assert [type(r).__name__ for r in records] == [
            "StoredSignal",
            "CorruptMessage",
            "CorruptMessage",
            "CorruptMessage",
        ]
        bad = [r for r in records if isinstance(r, CorruptMessage)]
        assert [r.stream_seq for r in bad] == [2, 3, 4]
        assert "not JSON" in bad[0].reason
        assert "hash mismatch" in bad[1].reason
        assert "not a valid signal" in bad[2].reason
        run = await log.read_run("r1")
        assert isinstance(run[0], StoredSignal)
        assert len(run) == 4
