"""Publishing inputs (commands and reports) to ``SISAS_IN``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from sisas.bus.connection import refused
from sisas.bus.consumers import PullFeed, pull_feed
from sisas.bus.ports import Inputs, Published
from sisas.bus.translate import nats_errors
from sisas.errors import BusError, BusUnavailable, SisasError
from sisas.signals.inputs import Input, StartRun, decode_input, encode_input
from sisas.signals.names import IN_PREFIX, INPUT_STREAM, admit_subject, input_subject
from sisas.telemetry.tracing import inject

__all__ = [
    "REJECTED_SUBJECT",
    "JetStreamInputs",
    "Published",
    "publish_input",
    "publish_input_acked",
    "publish_start",
    "stored_input",
]


REJECTED_SUBJECT = f"{IN_PREFIX}._._.rejected"
"""Where refused inputs are recorded, beside the inputs (one record per refused seq)."""


async def publish_input(js: JetStreamContext, inp: Input, *, attempts: int = 20) -> int:
    """Publish ``inp`` (deduplicated by its id); return its stream sequence.

    Carries the current span's trace context in its headers. Retries transient
    failures; raises :class:`BusError` when it cannot be stored, at once when the server
    refused this NATS user the subject.
    """
    return (await publish_input_acked(js, inp, attempts=attempts)).seq


async def publish_input_acked(
    js: JetStreamContext, inp: Input, *, attempts: int = 20, subject: str = ""
) -> Published:
    """:func:`publish_input`, also saying whether the server had the input already;
    ``subject``: another subject than its input subject (a request awaiting admission)."""
    subject = subject or input_subject(
        inp.pipeline, inp.run_id, str(type(inp).__struct_config__.tag)
    )
    data = encode_input(inp)
    headers = inject({"Nats-Msg-Id": inp.id})
    last: Exception | None = None
    for i in range(attempts):
        try:
            ack = await js.publish(subject, data, headers=headers)
            return Published(int(ack.seq), bool(ack.duplicate))
        except Exception as exc:  # timeouts, no responders during a failover
            last = exc
            if refused(js._nc, subject):  # exit 2, like refused credentials
                raise BusUnavailable(
                    f"the server refused {subject} to this NATS user: its role may not send "
                    f"{type(inp).__struct_config__.tag} inputs; check SISAS_NATS_NKEY and the "
                    "role's permissions (docs/security.md)"
                ) from None
            await asyncio.sleep(min(1.0, 0.05 * 2**i))
    raise BusError(f"could not publish {inp.id} to {subject}: {last}")


async def publish_start(
    inputs: Inputs,
    pipeline: str,
    run_id: str,
    *,
    input_digest: str,
    seed: int,
    at: datetime | None = None,
    admit: bool = False,
    **fields: Any,
) -> Published:
    """Ask for a run: publish its ``start_run`` (id ``start:<run_id>``, stamped now unless
    ``at`` is given; ``fields`` are StartRun's other fields); where it is stored (a
    duplicate: a start of this run id was sent already, and this one changes nothing).
    ``admit``: the pipeline has a concurrency limit: the request goes to ``SISAS_ADMIT``,
    where the admission service releases it to the orchestrator when a slot is free."""
    start = StartRun(
        id=f"start:{run_id}",
        pipeline=pipeline,
        run_id=run_id,
        at=at or datetime.now(UTC),
        seed=seed,
        input_digest=input_digest,
        **fields,
    )
    return await inputs.publish(start, subject=admit_subject(pipeline, run_id) if admit else "")


async def stored_input(js: JetStreamContext, seq: int) -> Input | None:
    """The input stored at ``seq`` of ``SISAS_IN`` (say, the first of a duplicated
    request: its input and configuration), None when it is gone or not an input."""
    with nats_errors(f"read the request stored at {INPUT_STREAM} seq {seq}"):
        try:
            msg = await js.get_msg(INPUT_STREAM, seq)
        except NotFoundError:
            return None
    try:
        return decode_input(msg.data or b"")
    except SisasError:
        return None


class JetStreamInputs:
    """``SISAS_IN`` as the :class:`sisas.bus.ports.Inputs` port."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(self, inp: Input, *, subject: str = "") -> Published:
        return await publish_input_acked(self._js, inp, subject=subject)

    async def consume(self, durable: str, *, ack_wait: float) -> PullFeed:
        return await pull_feed(self._js, INPUT_STREAM, f"{IN_PREFIX}.>", durable, ack_wait=ack_wait)

    async def stored(self, seq: int) -> Input | None:
        return await stored_input(self._js, seq)

    async def record_rejection(self, seq: int, subject: str, reason: str, size: int) -> None:
        record = {"stream_seq": seq, "subject": subject, "reason": reason, "size": size}
        await self._js.publish(
            REJECTED_SUBJECT,
            json.dumps(record).encode(),
            headers={"Nats-Msg-Id": f"rejected:{seq}"},
        )
