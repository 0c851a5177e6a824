"""The signal log on NATS JetStream.

An append is one message (a commit) holding the decision's signals on
``sisas.run.<pipeline>.<run>.c``, split only when it would pass the server's max payload.
Appends carry ``Nats-Msg-Id`` (the commit's deterministic id: a retried append is
deduplicated) and ``Nats-Expected-Last-Subject-Sequence`` with
``...-Subject: sisas.run.<pipeline>.<run>.>``, so the optimistic check covers the whole
run. A "wrong last sequence" answer (10071 single node, 10164 cluster) is first
checked against the log: if the commit already stored there is ours, byte for byte,
our earlier write landed (a retry after a lost ack) and the append goes on. Only
otherwise is it an :class:`AppendConflict`. Transient errors (no responders, timeouts,
503) are retried until ``timeout``. With tracing on, the current span's
``traceparent`` rides in the headers (never in the signal's bytes or hash).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import ServiceUnavailableError

from sisas.bus.log import HEADERS_ROOM, AppendResult, check_batch, own_commit_seq, split_commits
from sisas.bus.pull_reader import read_range
from sisas.bus.requests import PUBACK_DECODER, Reply, Requester
from sisas.errors import AppendConflict, AppendFailed, BusUnavailable
from sisas.signals.envelope import Signal
from sisas.signals.names import LOG_PREFIX, LOG_STREAM, commit_subject, run_filter
from sisas.signals.records import (
    CorruptMessage,
    LogGap,
    LogRecord,
    StoredSignal,
    commit_id,
    decode_records,
)
from sisas.telemetry.tracing import inject

__all__ = ["JetStreamLog", "decoded_logged"]

log = logging.getLogger("sisas.bus")

T = TypeVar("T")

CONFLICT_CODES: Final = frozenset({10071, 10164})
TRANSIENT_STATUS: Final = frozenset({"503", "408"})
# JetStream out of storage: insufficient resources, storage or memory limits exceeded.
NO_SPACE_CODES: Final = frozenset({10023, 10047, 10028})


class _Transient(Exception):
    pass


class JetStreamLog:
    """:class:`sisas.bus.log.SignalLog` on a JetStream stream (default ``SISAS_LOG``)."""

    def __init__(
        self,
        nc: NATS,
        *,
        stream: str = LOG_STREAM,
        subjects: str = f"{LOG_PREFIX}.>",
        timeout: float = 5.0,
        append_timeout: float = 30.0,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._js = nc.jetstream()
        self._stream = stream
        self._timeout = timeout
        self._append_timeout = append_timeout
        self._requests = Requester(nc)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._requests.start()
            self._started = True

    async def close(self) -> None:
        await self._requests.close()
        self._started = False

    # -- append -------------------------------------------------------------------

    async def append(self, signals: Sequence[Signal], *, expected_last_seq: int) -> AppendResult:
        check_batch(signals)
        await self.start()
        first_signal = signals[0]
        filter_ = run_filter(first_signal.run_id, first_signal.pipeline)
        subject = commit_subject(first_signal.pipeline, first_signal.run_id)
        expected, first, duplicates = expected_last_seq, 0, 0
        for chunk, data in split_commits(signals, self._nc.max_payload - HEADERS_ROOM):
            seq, dup = await self._append_commit(chunk, data, subject, filter_, expected)
            expected, first = seq, first or seq
            duplicates += len(chunk) if dup else 0
        return AppendResult(first_seq=first, last_seq=expected, duplicates=duplicates)

    async def _append_commit(
        self, chunk: Sequence[Signal], data: bytes, subject: str, filter_: str, expected: int
    ) -> tuple[int, bool]:
        """Append one commit (``data``) fenced on ``expected``; its stream seq and whether
        the log already held it."""
        msg_id = commit_id(chunk)
        headers = inject(
            {
                "Nats-Msg-Id": msg_id,
                "Nats-Expected-Last-Subject-Sequence": str(expected),
                "Nats-Expected-Last-Subject-Sequence-Subject": filter_,
            }
        )
        deadline = time.monotonic() + self._append_timeout
        delay = 0.05
        while True:
            try:
                reply = await self._request(subject, data, headers)
                if reply.status in TRANSIENT_STATUS:
                    raise _Transient(f"status {reply.status}")
                ack = PUBACK_DECODER.decode(reply.data)
            except (_Transient, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise AppendFailed(
                        f"append of {msg_id} not acknowledged within "
                        f"{self._append_timeout:.0f}s ({exc or 'timeout'}): is the server or "
                        "its JetStream quorum up? Retrying later is safe (appends are idempotent)"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if ack.error is None:
                return ack.seq, bool(ack.duplicate)
            if ack.error.err_code in CONFLICT_CODES:
                landed = await self._find_own(chunk, data)
                if landed:
                    return landed, True
                last = await self.last_of_run(chunk[0].run_id)
                actual = last.stream_seq if last else 0
                raise AppendConflict(
                    f"run {chunk[0].run_id} changed since stream seq {expected} (now {actual}): "
                    f"another writer appended first; reload the run and decide again",
                    expected_last_seq=expected,
                    actual_last_seq=actual,
                )
            if ack.error.err_code in NO_SPACE_CODES:
                raise AppendFailed(
                    f"the server has no storage left for {msg_id} ({ack.error.description}, "
                    f"code {ack.error.err_code}): free disk space or raise JetStream's "
                    "max_file_store, then retry (nothing was written; appends are idempotent)"
                )
            if ack.error.code == 503 and time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            raise AppendFailed(
                f"the server rejected {msg_id}: {ack.error.description} "
                f"(code {ack.error.code}/{ack.error.err_code})"
            )

    async def _find_own(self, chunk: Sequence[Signal], data: bytes) -> int:
        """Stream seq of the commit ``data`` if the log already holds exactly it, else 0."""
        first = chunk[0]
        last = await self.last_of_run(first.run_id)
        if not isinstance(last, StoredSignal) or last.signal.seq < chunk[-1].seq:
            return 0
        return own_commit_seq(await self.read_run(first.run_id), chunk, data)

    async def _request(self, subject: str, data: bytes, headers: dict[str, str] | None) -> Reply:
        try:
            return await self._requests.request(
                subject, data, headers=headers, timeout=self._timeout
            )
        except ConnectionClosedError:
            raise BusUnavailable(
                "the NATS connection is closed: check the server and run the command again"
            ) from None

    # -- reads ----------------------------------------------------------------------

    async def last_of_run(self, run_id: str) -> StoredSignal | CorruptMessage | None:
        await self.start()
        payload = json.dumps({"last_by_subj": run_filter(run_id)}).encode()
        reply = await self._direct_get(payload)
        if reply is None:
            return None
        seq = int(reply.headers.get("Nats-Sequence", "0"))
        return decode_records(seq, reply.headers.get("Nats-Subject", ""), reply.data)[-1]

    async def first_of_kind(
        self, run_id: str, kind: str, *, within: int = 4
    ) -> StoredSignal | CorruptMessage | None:
        """The run's first signal of ``kind`` among its first ``within`` messages (the
        signals a run starts with: ``run_requested``, ``run_started``), or None."""
        await self.start()
        seq = 1
        for _ in range(within):
            payload = json.dumps({"next_by_subj": run_filter(run_id), "seq": seq}).encode()
            reply = await self._direct_get(payload)
            if reply is None:
                return None
            seq = int(reply.headers.get("Nats-Sequence", "0"))
            for rec in decode_records(seq, reply.headers.get("Nats-Subject", ""), reply.data):
                if isinstance(rec, StoredSignal) and rec.signal.kind == kind:
                    return rec
            seq += 1
        return None

    async def _direct_get(self, payload: bytes) -> Reply | None:
        """One message by ``last_by_subj`` / ``next_by_subj``: from any current replica
        (direct get), else from the stream leader (``STREAM.MSG.GET``).

        In a cluster a replica that is catching up (a node cut off and brought back)
        stops answering direct gets; if none is current the request has no responders
        (503) though the leader can answer, so a 503 or timeout asks the leader too."""
        deadline = time.monotonic() + self._append_timeout
        while True:
            try:
                reply = await self._request(f"$JS.API.DIRECT.GET.{self._stream}", payload, None)
            except TimeoutError:
                reply = Reply(status="408", headers={}, data=b"")
            if reply.status == "404":
                return None
            if reply.status == "":
                return reply
            with contextlib.suppress(_Transient):
                return await self._leader_get(payload)
            if time.monotonic() > deadline:
                raise AppendFailed(
                    f"reading stream {self._stream} failed: status {reply.status} for "
                    f"{self._append_timeout:.0f}s: is a stream replica current? "
                    "`nats stream info` shows its cluster"
                )
            await asyncio.sleep(0.1)

    async def _leader_get(self, payload: bytes) -> Reply | None:
        """:meth:`_direct_get` through the stream leader's API; raises ``_Transient``
        when the leader does not answer either."""
        try:
            got = await self._request(f"$JS.API.STREAM.MSG.GET.{self._stream}", payload, None)
        except TimeoutError:
            raise _Transient from None
        if got.status:
            raise _Transient
        answer = json.loads(got.data)
        error = answer.get("error")
        if error is not None:
            if error.get("code") == 404:
                return None
            raise _Transient
        message = answer["message"]
        return Reply(
            status="",
            headers={"Nats-Sequence": str(message["seq"]), "Nats-Subject": message["subject"]},
            data=base64.b64decode(message.get("data") or b""),
        )

    async def _stream_info(self) -> StreamInfo:
        """The stream's info, retried through a leader election or a restarting server
        (until the append timeout: a read is as patient as a write)."""
        return await self._patiently(lambda: self._js.stream_info(self._stream))

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self._append_timeout
        delay = 0.05
        while True:
            try:
                return await call()
            except (TimeoutError, NatsTimeoutError, NoRespondersError, ServiceUnavailableError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def last_seq(self) -> int:
        info = await self._stream_info()
        return int(info.state.last_seq)

    async def identity(self) -> str:
        """The stream's name and creation time: a projection folded from another
        stream (the data folder was wiped, another cluster) is rebuilt, not extended."""
        info = await self._stream_info()
        return f"{self._stream}@{info.created}"

    async def read_run(self, run_id: str) -> list[StoredSignal | CorruptMessage]:
        last = await self.last_of_run(run_id)
        if last is None:
            return []
        out: list[StoredSignal | CorruptMessage] = []
        async for msg_seq, msg in self._consume(run_filter(run_id), 1):
            out.extend(decode_records(msg_seq, msg.subject, msg.data))
            # On a cluster the direct get may have been answered by a replica behind the
            # leader: read on while the consumer (the leader's view) has more of the run.
            if msg_seq >= last.stream_seq and not _pending(msg):
                break
        return out

    async def follow(
        self,
        *,
        from_seq: int = 1,
        live: bool = False,
        to_seq: int = 0,
        keep: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[LogRecord]:
        info = await self._stream_info()
        end, first = int(info.state.last_seq), int(info.state.first_seq)
        if to_seq and not live:
            end = min(end, to_seq)
        from_seq = max(from_seq, 1)
        if not live and end < from_seq:
            return
        expected = from_seq
        if end and first > from_seq:
            yield LogGap(first=from_seq, last=first - 1)
            expected = first
        messages = (
            self._messages(expected)
            if live
            else read_range(self._nc, self._stream, self._subjects, expected, end)
        )
        async for msg_seq, subject, data in messages:
            if msg_seq > expected:
                yield LogGap(first=expected, last=msg_seq - 1)
            if msg_seq >= expected and (keep is None or keep(subject)):
                for record in decoded_logged(msg_seq, subject, data):
                    yield record
            expected = max(expected, msg_seq + 1)
            if not live and msg_seq >= end:
                return
        if not live and expected <= end:
            yield LogGap(first=expected, last=end)

    async def read_messages(
        self, *, from_seq: int = 1, to_seq: int = 0
    ) -> AsyncIterator[LogGap | tuple[int, str, bytes]]:
        """What :meth:`follow` (not live) reads, undecoded: each message from
        ``from_seq`` to ``to_seq`` (the end of the log when 0) as (stream sequence,
        subject, data), and the holes between them as :class:`LogGap` s (a reader that
        hands messages on to others decodes only its own)."""
        info = await self._stream_info()
        end, first = int(info.state.last_seq), int(info.state.first_seq)
        if to_seq:
            end = min(end, to_seq)
        from_seq = max(from_seq, 1)
        if end < from_seq:
            return
        expected = from_seq
        if first > from_seq:
            yield LogGap(first=from_seq, last=first - 1)
            expected = first
        async for msg_seq, subject, data in read_range(
            self._nc, self._stream, self._subjects, expected, end
        ):
            if msg_seq > expected:
                yield LogGap(first=expected, last=msg_seq - 1)
            if msg_seq >= expected:
                yield msg_seq, subject, data
            expected = max(expected, msg_seq + 1)
            if msg_seq >= end:
                return
        if expected <= end:
            yield LogGap(first=expected, last=end)

    async def _messages(self, from_seq: int) -> AsyncIterator[tuple[int, str, bytes]]:
        async for msg_seq, msg in self._consume(self._subjects, from_seq):
            yield msg_seq, msg.subject, msg.data

    async def follow_run(self, run_id: str) -> AsyncGenerator[StoredSignal | CorruptMessage, None]:
        """Every message of one run from its first, then live as they are appended (an
        async generator: close it, e.g. with ``contextlib.aclosing``, when done early)."""
        async for msg_seq, msg in self._consume(run_filter(run_id), 1):
            for record in decode_records(msg_seq, msg.subject, msg.data):
                yield record

    async def _consume(self, subject: str, from_seq: int) -> AsyncIterator[tuple[int, Msg]]:
        """Messages on ``subject`` from ``from_seq``, via an ordered push consumer."""
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await self._patiently(
            lambda: self._js.subscribe(
                subject,
                stream=self._stream,
                ordered_consumer=True,
                cb=on_msg,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq
                ),
            )
        )
        try:
            while True:
                msg = await queue.get()
                yield msg.metadata.sequence.stream, msg
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _pending(msg: Msg) -> int:
    """Messages of the consumer's filter after ``msg``, as its server counted them."""
    try:
        return int(msg.metadata.num_pending or 0)
    except Exception:  # no JetStream metadata: nothing more is known
        return 0


def decoded_logged(seq: int, subject: str, data: bytes) -> list[StoredSignal | CorruptMessage]:
    """The records of the message at ``seq`` (:func:`decode_records`), a corrupt one
    logged as a warning naming its place."""
    records = decode_records(seq, subject, data)
    for record in records:
        if isinstance(record, CorruptMessage):
            log.warning("stream seq %d on %s: %s", seq, subject, record.reason)
    return records
