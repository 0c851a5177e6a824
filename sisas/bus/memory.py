"""The in-memory twins of the ports (:mod:`sisas.bus.ports`): services with no server.

:func:`memory_ports` gives an orchestrator and a worker everything they run on, in one
process: the :class:`~sisas.bus.memory_log.MemoryLog`, artifacts in a dict, and queues
that keep JetStream's contract as the services rely on it: a durable consumer shared by
its takers delivers each message to one of them, in order, until it is acknowledged or
terminated; ``nak`` and an expired ``ack_wait`` deliver it again; a message id stored
once is stored once (``Nats-Msg-Id``). The fast tests run the real service code on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sisas.bus.artifacts import MemoryArtifacts
from sisas.bus.inputs import REJECTED_SUBJECT, Published
from sisas.bus.memory_log import MemoryLog
from sisas.bus.ports import Delivery, Ports
from sisas.bus.settings import Settings
from sisas.bus.work import LOG_SEQ_HEADER
from sisas.errors import SisasError
from sisas.handlers.circuit import Circuit
from sisas.signals.codec import encode_signal
from sisas.signals.inputs import Input, decode_input, encode_input
from sisas.signals.names import (
    IN_PREFIX,
    WORK_PREFIX,
    input_subject,
    parse_run_subject,
    work_subject,
)
from sisas.signals.plan import PipelinePlan
from sisas.signals.records import StoredSignal
from sisas.telemetry.tracing import inject

__all__ = [
    "MemoryCircuits",
    "MemoryInputs",
    "MemoryPlans",
    "MemoryQueue",
    "MemoryWire",
    "MemoryWork",
    "memory_ports",
]


@dataclass(frozen=True)
class _Message:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class _Pair:
    stream: int


@dataclass(frozen=True)
class _Metadata:
    sequence: _Pair
    num_delivered: int


class MemoryQueue:
    """A stream of messages with durable consumers (see the module's docstring)."""

    def __init__(self) -> None:
        self.messages: list[_Message] = []
        self._ids: dict[str, int] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._changed = asyncio.Event()

    def put(self, subject: str, data: bytes, headers: dict[str, str], msg_id: str) -> Published:
        """Store a message; a message id stored already is not stored again."""
        if msg_id in self._ids:
            return Published(self._ids[msg_id], True)
        seq = len(self.messages) + 1
        self.messages.append(_Message(seq, subject, data, headers))
        self._ids[msg_id] = seq
        self.changed()
        return Published(seq, False)

    def changed(self) -> None:
        """Wake the consumers waiting for a message."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(timeout, 0.001))

    def consumer(self, durable: str, prefix: str, ack_wait: float) -> _Consumer:
        """The durable consumer ``durable`` of the subjects under ``prefix`` (made once)."""
        if durable not in self._consumers:
            self._consumers[durable] = _Consumer(self, prefix, ack_wait)
        return self._consumers[durable]


class _Consumer:
    def __init__(self, queue: MemoryQueue, prefix: str, ack_wait: float) -> None:
        self.queue = queue
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.next = 0
        self.due: dict[int, float] = {}
        """Delivered, not settled: seq -> when it is delivered again (loop time)."""
        self.delivered: dict[int, int] = {}
        self.settled: set[int] = set()

    def _take(self, now: float) -> _Message | None:
        again = [seq for seq, at in self.due.items() if at <= now]
        if again:
            return self.queue.messages[min(again) - 1]
        while self.next < len(self.queue.messages):
            msg = self.queue.messages[self.next]
            self.next += 1
            if msg.subject.startswith(self.prefix) and msg.seq not in self.settled:
                return msg
        return None

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = loop.time()
            out: list[Delivery] = []
            while len(out) < batch and (msg := self._take(now)) is not None:
                self.due[msg.seq] = now + self.ack_wait
                self.delivered[msg.seq] = self.delivered.get(msg.seq, 0) + 1
                out.append(MemoryDelivery(self, msg, self.delivered[msg.seq]))
            if out:
                return out
            if now >= deadline:
                raise TimeoutError
            await self.queue.wait(min([deadline - now] + [at - now for at in self.due.values()]))

    async def close(self) -> None:
        """Nothing to release: the consumer is durable."""

    def settle(self, seq: int) -> None:
        self.due.pop(seq, None)
        self.settled.add(seq)

    def again(self, seq: int, delay: float) -> None:
        if seq in self.due:
            self.due[seq] = asyncio.get_running_loop().time() + delay
            self.queue.changed()


class MemoryDelivery:
    """A message delivered by a :class:`MemoryQueue`'s consumer."""

    def __init__(self, consumer: _Consumer, msg: _Message, delivered: int) -> None:
        self._consumer = consumer
        self._msg = msg
        self.metadata = _Metadata(_Pair(msg.seq), delivered)

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def headers(self) -> dict[str, str] | None:
        return self._msg.headers

    async def ack(self) -> None:
        self._consumer.settle(self._msg.seq)

    async def term(self) -> None:
        self._consumer.settle(self._msg.seq)

    async def nak(self, delay: float | None = None) -> None:
        self._consumer.again(self._msg.seq, delay or 0.0)

    async def in_progress(self) -> None:
        self._consumer.again(self._msg.seq, self._consumer.ack_wait)


class MemoryInputs:
    """``SISAS_IN`` in memory."""

    def __init__(self) -> None:
        self.queue = MemoryQueue()

    async def publish(self, inp: Input, *, subject: str = "") -> Published:
        tag = str(type(inp).__struct_config__.tag)
        subject = subject or input_subject(inp.pipeline, inp.run_id, tag)
        return self.queue.put(subject, encode_input(inp), inject({}), inp.id)

    async def consume(self, durable: str, *, ack_wait: float) -> _Consumer:
        return self.queue.consumer(durable, f"{IN_PREFIX}.", ack_wait)

    async def record_rejection(self, seq: int, subject: str, reason: str, size: int) -> None:
        record = {"stream_seq": seq, "subject": subject, "reason": reason, "size": size}
        self.queue.put(REJECTED_SUBJECT, json.dumps(record).encode(), {}, f"rejected:{seq}")

    async def stored(self, seq: int) -> Input | None:
        if not 0 < seq <= len(self.queue.messages):
            return None
        try:
            return decode_input(self.queue.messages[seq - 1].data)
        except SisasError:
            return None

    def rejections(self) -> list[dict[str, object]]:
        """The rejection records stored, in order."""
        return [json.loads(m.data) for m in self.queue.messages if m.subject == REJECTED_SUBJECT]


class MemoryWork:
    """``SISAS_WORK`` in memory."""

    def __init__(self) -> None:
        self.queue = MemoryQueue()

    async def offer(self, scheduled: Iterable[StoredSignal]) -> int:
        new = 0
        for rec in scheduled:
            s = rec.signal
            headers = inject({LOG_SEQ_HEADER: str(rec.stream_seq)})
            subject = work_subject(s.pipeline, s.run_id)
            new += not self.queue.put(subject, encode_signal(s), headers, s.id).duplicate
        return new

    async def consume(self, pipeline: str, *, ack_wait: float) -> _Consumer:
        return self.queue.consumer(f"worker-{pipeline}", f"{WORK_PREFIX}.{pipeline}.", ack_wait)


class MemoryPlans:
    def __init__(self) -> None:
        self.plans: dict[str, PipelinePlan] = {}

    def listen(self) -> None:
        """Nothing to keep: every read is from memory."""

    async def publish(self, plan: PipelinePlan) -> None:
        self.plans[plan.name] = plan

    async def get(self, name: str) -> PipelinePlan | None:
        return self.plans.get(name)

    async def names(self) -> list[str]:
        return sorted(self.plans)


class MemoryCircuits:
    def __init__(self) -> None:
        self.circuits: dict[str, dict[str, Circuit]] = {}

    async def get(self, pipeline: str) -> dict[str, Circuit]:
        return dict(self.circuits.get(pipeline, {}))

    async def store(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        self.note(pipeline, changed)

    def note(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        if changed:
            self.circuits[pipeline] = {**self.circuits.get(pipeline, {}), **changed}


@dataclass
class MemoryWire:
    """Presence, progress and commit notices in one process."""

    log: MemoryLog
    present: dict[str, Mapping[str, object] | Callable[[], Mapping[str, object]]] = field(
        default_factory=dict
    )
    """Who answers on each presence subject now."""
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    """What was published (progress), oldest first; bounded to the last 10,000."""

    @property
    def max_payload(self) -> int:
        return self.log.max_payload

    @contextlib.asynccontextmanager
    async def answering(
        self,
        subjects: Iterable[str],
        about: Mapping[str, object] | Callable[[], Mapping[str, object]],
    ) -> AsyncIterator[None]:
        names = list(subjects)
        for name in names:
            self.present[name] = about
        try:
            yield
        finally:
            for name in names:
                self.present.pop(name, None)

    async def publish(self, subject: str, payload: bytes) -> None:
        self.sent.append((subject, payload))
        del self.sent[:-10_000]

    async def answered(self, subject: str, *, timeout: float) -> bool:
        return subject in self.present

    async def answers(self, subject: str, *, quiet: float, timeout: float) -> list[dict[str, Any]]:
        about = self.present.get(subject)
        if about is None:
            return []
        return [dict(about() if callable(about) else about)]

    @contextlib.asynccontextmanager
    async def on_commits(self, callback: Callable[[str, bytes], None]) -> AsyncIterator[None]:
        def notice(subject: str, data: bytes) -> None:
            if parse_run_subject(subject) is not None:
                callback(subject, data)

        self.log.listeners.append(notice)
        try:
            yield
        finally:
            self.log.listeners.remove(notice)


def memory_ports(settings: Settings | None = None, *, max_payload: int = 1024 * 1024) -> Ports:
    """Fresh in-memory ports: an empty log, queues, plans, circuits and artifacts."""
    log = MemoryLog(max_payload=max_payload)
    return Ports(
        settings=settings or Settings(),
        log=log,
        artifacts=MemoryArtifacts(),
        inputs=MemoryInputs(),
        work=MemoryWork(),
        plans=MemoryPlans(),
        circuits=MemoryCircuits(),
        wire=MemoryWire(log),
    )
