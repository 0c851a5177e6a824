"""Where circuit breakers live between runs: one KV entry per pipeline, shared by every
orchestrator, read with a short cache and written with compare-and-set.
"""

from __future__ import annotations

import time

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.kv import KeyValue

from sisas.bus.translate import nats_errors
from sisas.errors import BusError
from sisas.handlers.circuit import Circuit
from sisas.signals.names import CIRCUIT_BUCKET

__all__ = ["CircuitBoard"]

_DECODER = msgspec.json.Decoder(dict[str, Circuit])


class CircuitBoard:
    """Circuits by pipeline and phase. ``ttl`` bounds how stale a read may be."""

    def __init__(self, js: JetStreamContext, *, ttl: float = 0.5) -> None:
        self._js = js
        self._ttl = ttl
        self._kv: KeyValue | None = None
        self._cache: dict[str, tuple[float, int, dict[str, Circuit]]] = {}
        self._noted: dict[str, dict[str, Circuit]] = {}

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(CIRCUIT_BUCKET)
            except (BucketNotFoundError, JsNotFoundError):
                self._kv = await self._js.create_key_value(bucket=CIRCUIT_BUCKET, history=10)
        return self._kv

    async def _read(self, pipeline: str) -> tuple[int, dict[str, Circuit]]:
        kv = await self._bucket()
        try:
            entry = await kv.get(pipeline)
        except (KeyNotFoundError, JsNotFoundError):
            return 0, {}
        circuits = _DECODER.decode(entry.value) if entry.value else {}
        return int(entry.revision or 0), circuits

    async def get(self, pipeline: str) -> dict[str, Circuit]:
        """The pipeline's circuits as last read or written here (at most ``ttl`` old),
        with what was :meth:`note`-d here and is not stored yet."""
        cached = self._cache.get(pipeline)
        if cached is None or time.monotonic() - cached[0] >= self._ttl:
            revision, circuits = await self._read(pipeline)
            self._cache[pipeline] = cached = (time.monotonic(), revision, circuits)
        noted = self._noted.get(pipeline)
        return {**cached[2], **noted} if noted else cached[2]

    def note(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        """Let every :meth:`get` here see ``changed`` at once, until :meth:`store` has
        written it: decisions of other runs taken meanwhile count from it, so a phase
        failing in many runs at once opens its circuit as it would one run after
        another. A decision taken again after a lost append may count its failure twice
        here: that only opens the circuit sooner."""
        if changed:
            self._noted.setdefault(pipeline, {}).update(changed)

    def _stored(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        noted = self._noted.get(pipeline)
        if noted is None:
            return
        for phase, circuit in changed.items():
            if noted.get(phase) == circuit:  # not noted again since: stored now
                del noted[phase]
        if not noted:
            del self._noted[pipeline]

    async def store(self, pipeline: str, changed: dict[str, Circuit]) -> None:
        """Write the changed circuits; on a lost race, re-read and apply them again."""
        if not changed:
            return
        kv = await self._bucket()
        for _ in range(20):
            revision, current = await self._read(pipeline)
            merged = {**current, **changed}
            data = msgspec.json.encode(merged)
            with nats_errors(f"record the circuits of {pipeline}"):
                try:
                    if revision:
                        revision = await kv.update(pipeline, data, last=revision)
                    else:
                        revision = await kv.create(pipeline, data)
                except KeyWrongLastSequenceError:
                    continue  # another orchestrator wrote first: re-read and apply again
            self._cache[pipeline] = (time.monotonic(), revision, merged)
            self._stored(pipeline, changed)
            return
        raise BusError(f"could not record circuits of {pipeline}: 20 lost races in a row")
