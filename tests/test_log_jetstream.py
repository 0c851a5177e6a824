"""The log contract on JetStream (a real nats-server per test), plus what only it has."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError

from sisas.bus.jetstream_log import JetStreamLog
from sisas.bus.log import HEADERS_ROOM, split_commits
from sisas.bus.pull_reader import read_range
from sisas.bus.raw_client import Client
from sisas.bus.registry import PlanRegistry
from sisas.bus.requests import Requester
from sisas.bus.runtime import Bus
from sisas.signals import LogGap, StoredSignal, encode_signal
from sisas.signals.records import encode_commit
from tests.log_contract import Inject, LogContract, collect, run_signals


@pytest.fixture
def log(bus: Bus) -> JetStreamLog:
    return bus.log


@pytest.fixture
def inject(bus: Bus) -> Inject:
    async def put(subject: str, data: bytes) -> None:
        await bus.js.publish(subject, data)

    return put


class TestJetStreamLog(LogContract):
    pass


async def test_appends_carry_msg_id_and_the_run_wide_expectation_on_the_wire(bus: Bus) -> None:
    sigs = run_signals("r1", 3)
    await bus.log.append(sigs[:2], expected_last_seq=0)
    await bus.log.append(sigs[2:], expected_last_seq=1)
    first = await bus.js.get_msg("SISAS_LOG", 1)
    second = await bus.js.get_msg("SISAS_LOG", 2)
    assert first.headers is not None and second.headers is not None
    assert first.headers["Nats-Msg-Id"] == f"r1:1..2.{sigs[1].hash[:16]}"
    assert first.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
    assert second.headers["Nats-Expected-Last-Subject-Sequence"] == "1"
    assert second.headers["Nats-Expected-Last-Subject-Sequence-Subject"] == "sisas.run.pipe.r1.>"
    assert first.subject == second.subject == "sisas.run.pipe.r1.c"
    assert first.data == encode_commit(sigs[:2])


async def test_a_decision_past_the_max_payload_is_split_into_fenced_commits(bus: Bus) -> None:
    sigs = run_signals("r1", 40)
    room = len(encode_commit(sigs)) // 3
    chunks = split_commits(sigs, room)
    assert len(chunks) >= 3 and all(len(data) <= room for _, data in chunks)
    assert [s for chunk, _ in chunks for s in chunk] == sigs
    small = JetStreamLog(bus.nc)
    small._nc = _Payload(bus.nc, room + HEADERS_ROOM)  # type: ignore[assignment]
    result = await small.append(sigs, expected_last_seq=0)
    assert (result.first_seq, result.last_seq) == (1, len(chunks))
    again = await small.append(sigs, expected_last_seq=0)  # a retry: every commit is ours
    assert again.duplicates == len(sigs)
    records = await bus.log.read_run("r1")
    assert [r.signal for r in records if isinstance(r, StoredSignal)] == sigs
    await small.close()


async def test_a_run_read_after_a_stale_answer_of_its_last_signal_is_read_whole(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster a direct get may be answered by a replica behind the leader: a run
    read just after it ended must still end with its last commit (read_run reads on
    while the consumer has more of the run)."""
    sigs = run_signals("r1", 9)
    seq = 0
    for i in range(0, 9, 3):  # three commits
        seq = (await bus.log.append(sigs[i : i + 3], expected_last_seq=seq)).last_seq
    first = (await bus.log.read_run("r1"))[0]
    stale = JetStreamLog(bus.nc)

    async def behind(run_id: str) -> StoredSignal:  # a replica that holds the first only
        assert isinstance(first, StoredSignal)
        return first

    monkeypatch.setattr(stale, "last_of_run", behind)
    records = await stale.read_run("r1")
    assert [r.signal for r in records if isinstance(r, StoredSignal)] == sigs
    await stale.close()


class _Payload:
    """A connection that announces a smaller max payload."""

    def __init__(self, nc: object, max_payload: int) -> None:
        self._nc, self.max_payload = nc, max_payload

    def __getattr__(self, name: str) -> object:
        return getattr(self._nc, name)


async def test_the_log_refuses_deletes_and_purges(bus: Bus) -> None:
    await bus.log.append(run_signals("r1", 2), expected_last_seq=0)
    jsm = bus.js
    with pytest.raises(APIError):
        await jsm.delete_msg("SISAS_LOG", 1)
    with pytest.raises(APIError):
        await jsm.purge_stream("SISAS_LOG")
    assert await bus.log.last_seq() == 1


async def test_follow_reports_holes_in_the_stream_as_gaps(bus: Bus) -> None:
    # A stream without deny_delete stands in for a store whose data files lost messages.
    await bus.js.add_stream(StreamConfig(name="LEAKY", subjects=["leaky.>"]))
    leaky = JetStreamLog(bus.nc, stream="LEAKY", subjects="leaky.>")
    sigs = run_signals("r1", 5)
    for sig in sigs:
        await bus.js.publish("leaky.x", encode_signal(sig))
    for seq in (1, 3, 4):
        await bus.js.delete_msg("LEAKY", seq)
    records = await collect(leaky)
    assert records == [
        LogGap(first=1, last=1),
        StoredSignal(stream_seq=2, signal=sigs[1]),
        LogGap(first=3, last=4),
        StoredSignal(stream_seq=5, signal=sigs[4]),
    ]
    await leaky.close()


async def test_both_range_readers_give_every_message_across_batches_and_holes(bus: Bus) -> None:
    """The raw reader (every sisas connection) and the ``Msg`` reader (plain nats-py)
    read the same (sequence, subject, bytes), past one pull request's 4,096 messages,
    around deleted messages, from a middle start, and stop at ``last``."""
    await bus.js.add_stream(StreamConfig(name="RANGE", subjects=["range.>"]))
    acks = [bus.js.publish(f"range.s{i % 3}", b"m%d" % i) for i in range(1, 9001)]
    for ack in acks:
        await ack
    gone = (1, 4096, 4097, 5000)
    for seq in gone:
        await bus.js.delete_msg("RANGE", seq)
    assert isinstance(bus.nc, Client)
    plain = await nats.connect(bus.nc.connected_url.geturl())  # type: ignore[union-attr]
    try:
        for first, last in ((1, 9000), (4000, 8999), (8999, 9000), (9001, 9000)):
            raw = [x async for x in read_range(bus.nc, "RANGE", "range.>", first, last)]
            msgs = [x async for x in read_range(plain, "RANGE", "range.>", first, last)]
            kept = [s for s in range(first, last + 1) if s not in gone]
            assert raw == msgs
            assert [seq for seq, _, _ in raw] == kept
            assert all(d == b"m%d" % s and subj == f"range.s{s % 3}" for s, subj, d in raw)
        only = [x async for x in read_range(bus.nc, "RANGE", "range.s1", 1, 9000)]
        gone = (1, 4096, 4097, 5000)
        assert [s for s, _, _ in only] == [
            s for s in range(1, 9001) if s % 3 == 1 and s not in gone
        ]
    finally:
        await plain.close()


async def test_the_plan_registry_of_a_fresh_server_is_empty_not_an_error(bus: Bus) -> None:
    """nats-py raises NoKeysError on an empty bucket; `sisas run nosuch` on a shared
    server with no worker showed it as a traceback instead of 'unknown pipeline'."""
    registry = PlanRegistry(bus.js)
    assert await registry.names() == []
    assert await registry.get("nosuch") is None


async def test_a_requester_subscribes_once_however_often_it_is_started(bus: Bus) -> None:
    """Each extra subscription on the shared reply inbox delivered every reply once more:
    the work queue started its requester on every offer, so replies multiplied with the
    offers made (a 7-phase run went from ~22 to ~42 ms, a 1,000-item fan-out 2.5 -> 8 s)."""
    before = len(bus.nc._subs)
    requester = Requester(bus.nc)
    await asyncio.gather(*(requester.start() for _ in range(5)))
    await requester.start()
    assert len(bus.nc._subs) == before + 1
    replies = 0
    original = requester._on_reply

    async def counted(msg: object) -> None:
        nonlocal replies
        replies += 1
        await original(msg)  # type: ignore[arg-type]

    requester._on_reply = counted  # type: ignore[method-assign]
    requester._sub._cb = counted  # type: ignore[union-attr]
    for _ in range(3):
        reply = await requester.request("$JS.API.INFO", b"", headers=None, timeout=5)
        assert reply.status == ""
    assert replies == 3
    await requester.close()


async def test_a_get_the_replicas_cannot_answer_is_asked_of_the_stream_leader(bus: Bus) -> None:
    """A cluster whose replicas are catching up answers direct gets with 503 (no
    responders); the same ask through ``STREAM.MSG.GET`` reaches the leader and gives the
    same message, or None where the direct get gives 404."""
    sigs = run_signals("r1", 3)
    await bus.log.append(sigs[:2], expected_last_seq=0)
    await bus.log.append(sigs[2:], expected_last_seq=1)
    log = bus.log
    await log.start()
    for ask in (
        {"last_by_subj": "sisas.run.pipe.r1.>"},
        {"next_by_subj": "sisas.run.pipe.r1.>", "seq": 1},
        {"next_by_subj": "sisas.run.pipe.r1.>", "seq": 2},
        {"last_by_subj": "sisas.run.pipe.nothing.>"},
    ):
        payload = json.dumps(ask).encode()
        direct = await log._direct_get(payload)
        leader = await log._leader_get(payload)
        if direct is None:
            assert leader is None, ask
            continue
        assert leader is not None, ask
        assert leader.data == direct.data and leader.data
        for header in ("Nats-Sequence", "Nats-Subject"):
            assert leader.headers[header] == direct.headers[header], (ask, header)
