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
from sisas.signals.names import commit_subject, log_subject, partition_of, run_partition
from sisas.signals.records import encode_commit
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
        assert (result.first_seq, result.last_seq, result.duplicates) == (1, 1, 0)
        records = await log.read_run("r1")
        assert signals_of(records) == sigs
        assert [(r.stream_seq, r.index, r.of) for r in records if isinstance(r, StoredSignal)] == [
            (1, 0, 3),
            (1, 1, 3),
            (1, 2, 3),
        ]
        last = await log.last_of_run("r1")
        assert isinstance(last, StoredSignal)
        assert (last.stream_seq, last.signal, last.last_in_message) == (1, sigs[-1], True)
        assert await log.last_seq() == 1  # a decision is one message

    async def test_appending_the_same_signals_again_is_a_no_op(self, log: SignalLog) -> None:
        sigs = run_signals("r1", 3)
        await log.append(sigs, expected_last_seq=0)
        again = await log.append(sigs, expected_last_seq=0)
        assert (again.first_seq, again.last_seq, again.duplicates) == (1, 1, 3)
        assert await log.last_seq() == 1

    async def test_a_commit_lands_whole_or_not_at_all(self, log: SignalLog) -> None:
        sigs = run_signals("r1", 4)
        await log.append(sigs[:2], expected_last_seq=0)
        with pytest.raises(AppendConflict):  # another decision than the one that landed
            await log.append(sigs, expected_last_seq=0)
        result = await log.append(sigs[2:], expected_last_seq=1)
        assert (result.first_seq, result.last_seq, result.duplicates) == (2, 2, 0)
        assert signals_of(await log.read_run("r1")) == sigs

    async def test_signals_of_the_earlier_format_are_read_and_the_chain_goes_on(
        self, log: SignalLog, inject: Inject
    ) -> None:
        sigs = run_signals("r1", 4)
        for s in sigs[:2]:  # log format 1: one signal per message, on its kind's subject
            await inject(log_subject(s.pipeline, s.run_id, s.phase, s.kind), encode_signal(s))
        last = await log.last_of_run("r1")
        assert isinstance(last, StoredSignal) and (last.stream_seq, last.of) == (2, 1)
        with pytest.raises(AppendConflict):  # the fence covers both formats
            await log.append(sigs[2:], expected_last_seq=1)
        await log.append(sigs[2:], expected_last_seq=2)
        records = await log.read_run("r1")
        assert signals_of(records) == sigs
        assert [r.stream_seq for r in records] == [1, 2, 3, 3]
        requested = await log.first_of_kind("r1", "run_requested")
        assert isinstance(requested, StoredSignal) and requested.signal == sigs[0]

    async def test_a_bad_commit_is_one_corrupt_message_named_at_its_sequence(
        self, log: SignalLog, inject: Inject
    ) -> None:
        sigs = run_signals("r1", 3)
        other = run_signals("r2", 2)
        subject = commit_subject("pipe", "r1")
        await inject(subject, encode_commit([sigs[0], sigs[2]]))  # a gap in the chain
        await inject(subject, encode_commit([sigs[1], sigs[0]]))  # reordered
        await inject(subject, encode_commit(other))  # another run's commit
        await inject(subject, encode_commit(sigs).replace(b",", b", ", 1))  # not canonical
        await inject(subject, b'{"commit":2,"signals":[]}')
        await inject(subject, encode_signal(sigs[0]))  # a bare signal on a commit subject
        tampered = msgspec.structs.replace(sigs[1], attempt=9)
        await inject(subject, encode_commit([sigs[0], tampered, sigs[2]]))
        await inject(subject, b'{"commit":3,"signals":[]}')
        records = await collect(log)
        assert all(isinstance(r, CorruptMessage) for r in records)
        assert [r.stream_seq for r in records] == list(range(1, 9))  # type: ignore[union-attr]
        reasons = [r.reason for r in records if isinstance(r, CorruptMessage)]
        assert "not consecutive" in reasons[0] and "not consecutive" in reasons[1]
        assert "stored on" in reasons[2]
        assert "canonical" in reasons[3]
        assert "empty" in reasons[4]
        assert "not a valid commit" in reasons[5]
        assert "signal 1 of the commit" in reasons[6] and "hash mismatch" in reasons[6]
        assert "log format 3" in reasons[7]

    async def test_a_stale_expectation_is_a_conflict_and_stores_nothing(
        self, log: SignalLog
    ) -> None:
        sigs = run_signals("r1", 2)
        await log.append(sigs[:1], expected_last_seq=0)
        await log.append(sigs[1:], expected_last_seq=1)
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
        assert [r.stream_seq for r in records if isinstance(r, StoredSignal)] == [1, 1, 2, 2, 2]
        assert signals_of(records) == a + b
        assert [r.stream_seq for r in await collect(log, from_seq=2)] == [2, 2, 2]  # type: ignore[union-attr]
        assert await collect(log, from_seq=3) == []

    async def test_follow_stops_at_to_seq_and_decodes_only_what_keep_accepts(
        self, log: SignalLog
    ) -> None:
        runs = [run_signals(f"run{i}", 2) for i in range(3, 7)]  # shares 1, 0, 0, 0
        for sigs in runs:
            await log.append(sigs, expected_last_seq=0)
        assert signals_of(await collect(log, to_seq=2)) == runs[0] + runs[1]
        shares = [
            signals_of(await collect(log, keep=lambda s, i=i: partition_of(s, 2) == i))
            for i in range(2)
        ]
        assert sorted(map(len, shares)) != [0, 8]  # both shares hold runs here
        assert sorted(s.id for share in shares for s in share) == sorted(
            s.id for sigs in runs for s in sigs
        )
        for i, share in enumerate(shares):
            assert {run_partition(s.run_id, 2) for s in share} <= {i}

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
