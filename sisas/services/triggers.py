"""The trigger service: upstream messages in, at most one run per message and rule out.

Upstream systems publish JSON on their own subjects. The service keeps them in the
stream ``SISAS_UPSTREAM`` (created over the rules' subjects), reads it with the durable
consumer ``sisas-triggers`` and, per message:

1. evaluates every rule (:mod:`sisas.handlers.triggers`, pure);
2. looks the message id up in the KV bucket ``sisas-triggers``: found means a
   redelivery or a duplicate (however long after: the bucket keeps ids beyond any
   JetStream duplicate window), and no run is started again;
3. otherwise stores each matching rule's input and sends ``start_run`` with a run id
   derived from the rule and the message id (so even a crash between 3 and 4 starts one
   run: the orchestrator starts a run id once), then writes the id into the bucket;
4. records the evaluation as a ``trigger_evaluated`` signal in the message's own chain
   (pipeline ``triggers``), with each rule's verdict and why, signed like the
   orchestrator's signals when ``SISAS_SIGNING_KEY`` names a key;
5. acknowledges the message. A message that is not JSON is recorded with the reason and
   acknowledged: bad input never stops the service or blocks the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from sisas.bus.runtime import Bus
from sisas.client.client import Client
from sisas.errors import AppendConflict, BusError
from sisas.handlers.triggers import Evaluation, Rule, evaluate, message_id
from sisas.security.keys import signer_from_file
from sisas.signals import ChainHead, Draft, StoredSignal, TriggerEvaluated, TriggerResult
from sisas.signals.names import TRIGGER_BUCKET, TRIGGERS_PIPELINE, UPSTREAM_STREAM

__all__ = ["TriggerService", "evaluation_chain"]

log = logging.getLogger(__name__)

CONSUMER = "sisas-triggers"


def evaluation_chain(msg_id: str) -> str:
    """The run id of the chain holding an upstream message's evaluations."""
    return "trg-" + hashlib.sha256(msg_id.encode()).hexdigest()[:16]


def _seed(msg_id: str, ev: Evaluation) -> int:
    if ev.seed is not None:
        return ev.seed
    return int(hashlib.sha256(f"{ev.trigger}\0{msg_id}".encode()).hexdigest()[:8], 16) >> 1


class TriggerService:
    """Evaluates upstream messages against ``rules`` until stopped."""

    def __init__(self, bus: Bus, rules: list[Rule], *, batch: int = 32) -> None:
        self.bus = bus
        self.rules = rules
        self.batch = batch
        self.evaluated = 0
        self.started = 0
        self._kv: KeyValue | None = None
        self._sub: Any = None
        key = bus.settings.signing_key
        self.signer = signer_from_file(key) if key is not None else None

    async def start(self) -> None:
        """Create (or extend) the upstream stream, the bucket and the durable consumer.

        Raises :class:`BusError` naming what the server refused.
        """
        try:
            await self._provision()
        except NatsError as exc:
            raise BusError(
                f"the trigger service could not set up {UPSTREAM_STREAM}, the bucket "
                f"{TRIGGER_BUCKET} or the consumer {CONSUMER}: {exc}; check the server "
                "(`sisas status`) and the account's JetStream limits"
            ) from None

    async def _provision(self) -> None:
        js = self.bus.js
        subjects = sorted({r.subject for r in self.rules})
        try:
            info = await js.stream_info(UPSTREAM_STREAM)
            have = list(info.config.subjects or [])
            if not set(subjects) <= set(have):
                info.config.subjects = sorted(set(have) | set(subjects))
                await js.update_stream(info.config)
        except NotFoundError:
            try:
                await js.add_stream(
                    StreamConfig(
                        name=UPSTREAM_STREAM,
                        subjects=subjects,
                        storage="file",  # type: ignore[arg-type]
                        num_replicas=self.bus.settings.replicas,
                        duplicate_window=120,
                    )
                )
            except BadRequestError as exc:
                raise BusError(
                    f"cannot keep the upstream subjects {', '.join(subjects)} in "
                    f"{UPSTREAM_STREAM}: {exc.description}; if another stream already "
                    "holds them, point the rules at other subjects"
                ) from None
        try:
            self._kv = await js.key_value(TRIGGER_BUCKET)
        except (NotFoundError, BucketNotFoundError):
            self._kv = await js.create_key_value(
                bucket=TRIGGER_BUCKET, history=1, replicas=self.bus.settings.replicas
            )
        await js.add_consumer(
            UPSTREAM_STREAM,
            ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=1000,
            ),
        )
        self._sub = await js.pull_subscribe_bind(CONSUMER, UPSTREAM_STREAM)

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate messages until ``stop`` is set, then :meth:`close`."""
        assert self._sub is not None, "start() first"
        try:
            while not stop.is_set():
                try:
                    msgs = await self._sub.fetch(self.batch, timeout=0.5)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for msg in msgs:
                    await self._evaluate(msg)
        finally:
            await self.close()

    async def _evaluate(self, msg: Msg) -> None:
        try:
            await self.handle(msg.subject, msg.data, (msg.headers or {}).get("Nats-Msg-Id"))
            await msg.ack()
        except Exception:  # a failure here must not stop the service
            log.exception("trigger evaluation of %s failed; it will be redelivered", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def close(self) -> None:
        """Release the pull subscription (a late reply left in it would stall a drain)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # the connection is already closing
                await sub.unsubscribe()

    async def handle(self, subject: str, data: bytes, header_id: str | None) -> TriggerEvaluated:
        """Evaluate one upstream message; start its runs once; record the evaluation."""
        assert self._kv is not None
        msg_id = message_id(subject, data, header_id)
        key = hashlib.sha256(msg_id.encode()).hexdigest()
        try:
            message = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return await self._record(
                TriggerEvaluated(
                    subject=subject,
                    message_id=msg_id,
                    error=f"the message is not JSON ({exc}); publish a JSON object",
                )
            )
        evaluations = [evaluate(rule, subject, message, msg_id) for rule in self.rules]
        seen = None
        with contextlib.suppress(KeyNotFoundError):
            seen = await self._kv.get(key)
        if seen is None:
            for ev in evaluations:
                if ev.matched:
                    await self._start(ev, msg_id, subject)
            runs = [ev.run_id for ev in evaluations if ev.matched]
            await self._kv.put(key, msgspec.json.encode({"message_id": msg_id, "runs": runs}))
        results = [
            TriggerResult(
                trigger=ev.trigger, matched=ev.matched, reason=ev.reason, run_id=ev.run_id
            )
            for ev in evaluations
        ]
        return await self._record(
            TriggerEvaluated(
                subject=subject, message_id=msg_id, results=results, duplicate=seen is not None
            )
        )

    async def _start(self, ev: Evaluation, msg_id: str, subject: str) -> None:
        """Ask for the run a matched rule names (once per message: the run id and the
        idempotency key derive from the rule and the message id)."""
        await Client(self.bus).start(
            ev.pipeline,
            input_bytes=msgspec.json.encode(ev.input),
            seed=_seed(msg_id, ev),
            config=ev.config,
            run_id=ev.run_id,
            requested_by=f"trigger {ev.trigger} ({subject})",
            idempotency_key=f"trigger:{ev.trigger}:{msg_id}",
            trace={"sisas.trigger": ev.trigger, "messaging.destination.name": subject},
            check_plan=False,
            tags=ev.tags,
        )
        self.started += 1

    async def _record(self, body: TriggerEvaluated) -> TriggerEvaluated:
        run_id = evaluation_chain(body.message_id)
        for _ in range(10):  # another trigger service may append to the same chain
            last = await self.bus.log.last_of_run(run_id)
            if isinstance(last, StoredSignal):
                head, expected = ChainHead.after(last.signal), last.stream_seq
            else:
                head, expected = ChainHead(pipeline=TRIGGERS_PIPELINE, run_id=run_id), 0
            sigs, _ = head.extend([Draft(body=body, at=datetime.now(UTC))])
            if self.signer is not None:
                sigs = [self.signer.sign(s) for s in sigs]
            try:
                await self.bus.log.append(sigs, expected_last_seq=expected)
            except AppendConflict as exc:
                log.info("evaluation chain %s moved (%s); appending again", run_id, exc)
                continue
            self.evaluated += 1
            return body
        raise BusError(f"could not record the evaluation of {body.message_id}: chain contended")
