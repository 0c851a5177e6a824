"""Content-addressed artifacts (run inputs, phase outputs) in the JetStream object store.

An artifact's key is ``sha256:<hex>`` of its bytes. ``get`` re-hashes what it reads and
refuses bytes that do not match their key, so a damaged store is detected, not used.
Small artifacts this process stored or read recently are served from memory: their key
is the digest of those very bytes, so the copy cannot be stale (a phase's input is most
often the output its worker stored a moment ago).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue

from sisas.bus.requests import PUBACK_DECODER, Requester
from sisas.bus.streams import INLINE_MAX
from sisas.bus.translate import nats_errors
from sisas.errors import ArtifactNotFound, BusError
from sisas.signals.digest import bytes_digest
from sisas.signals.names import ARTIFACT_BUCKET, BLOB_BUCKET

__all__ = ["ArtifactStore", "JetStreamArtifacts", "MemoryArtifacts", "bytes_digest"]


def _name(digest: str) -> str:
    return digest.replace(":", "-")


class ArtifactStore(Protocol):
    async def put(self, data: bytes) -> str:
        """Store ``data``; return its digest. Storing the same bytes twice is a no-op."""
        ...

    async def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``. Raises :class:`ArtifactNotFound`."""
        ...

    async def exists(self, digest: str) -> bool: ...

    def recent(self, digest: str) -> bytes | None:
        """The bytes of ``digest`` when this process holds them in memory (no I/O),
        else None: :meth:`get` them."""
        ...


def _verified(digest: str, data: bytes) -> bytes:
    actual = bytes_digest(data)
    if actual != digest:
        raise BusError(f"artifact {digest} is damaged: its bytes hash to {actual}")
    return data


class MemoryArtifacts:
    """In-memory :class:`ArtifactStore` for unit tests."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, data: bytes) -> str:
        digest = bytes_digest(data)
        self._blobs.setdefault(digest, bytes(data))
        return digest

    async def get(self, digest: str) -> bytes:
        try:
            return _verified(digest, self._blobs[digest])
        except KeyError:
            raise ArtifactNotFound(f"no artifact {digest}") from None

    async def exists(self, digest: str) -> bool:
        return digest in self._blobs

    def recent(self, digest: str) -> bytes | None:
        blob = self._blobs.get(digest)
        if blob is None or bytes_digest(blob) != digest:
            return None  # :meth:`get` names what is wrong
        return blob


RECENT_BYTES = 16 * 1024 * 1024
"""Bytes of small artifacts a :class:`JetStreamArtifacts` keeps in memory at most."""


class JetStreamArtifacts:
    """:class:`ArtifactStore` on JetStream: small artifacts in a KV bucket, large ones in
    the ``sisas-artifacts`` object store.

    Most phase outputs are small, and nats-py's object store spends several requests and
    a consumer on every call (~3.5 ms here); a KV put is one publish and a get one direct
    get (~0.3 ms). Both are keyed by the digest of the bytes and verified on read. The
    small artifacts put or read last (up to ``recent_bytes``) are served from memory.
    """

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str = ARTIFACT_BUCKET,
        blobs: str = BLOB_BUCKET,
        inline_max: int = INLINE_MAX,
        recent_bytes: int = RECENT_BYTES,
        nc: NATS | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._js = js
        self._requests = Requester(nc) if nc is not None else None
        """Small puts go through it (as the log's appends do) when given a connection:
        nats-py's KV put is a request of its own, with its own future, timer and
        parsed acknowledgement, once per phase output."""
        self._timeout = timeout
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._recent_size = 0
        self._recent_max = recent_bytes
        self._bucket = bucket
        self._blobs = blobs
        self._inline_max = inline_max
        self._kv: KeyValue | None = None

    async def _blob_kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._blobs)
        return self._kv

    async def put(self, data: bytes) -> str:
        """Store ``data``; return its digest. Raises :class:`BusError` naming the fix."""
        digest = bytes_digest(data)
        fix = (
            "is the server reachable, and may this NATS user put artifacts (on a secured "
            "server the operator, worker and orchestrator roles may; see docs/security.md)?"
        )
        if digest in self._recent:  # put (acknowledged) or read here already: durable
            self._recent.move_to_end(digest)
            return digest
        with nats_errors(f"store artifact {digest}", fix):
            if len(data) <= self._inline_max:
                await self._put_small(digest.removeprefix("sha256:"), data)
                self._remember(digest, bytes(data))
                return digest
            if await self.exists(digest):
                return digest
            store = await self._js.object_store(self._bucket)
            await store.put(_name(digest), data)
        return digest

    async def _put_small(self, key: str, data: bytes) -> None:
        """Put ``data`` under ``key`` in the blobs bucket and wait for its fsync."""
        if self._requests is None:
            kv = await self._blob_kv()
            await kv.put(key, data)
            return
        await self._requests.start()
        reply = await self._requests.request(
            f"$KV.{self._blobs}.{key}", data, headers=None, timeout=self._timeout
        )
        if reply.status == "503":
            raise NoRespondersError  # no stream takes it: the bucket is missing
        if reply.status:
            raise BusError(f"the server answered status {reply.status}")
        ack = PUBACK_DECODER.decode(reply.data)
        if ack.error is not None:
            raise BusError(f"{ack.error.description} (code {ack.error.err_code})")

    async def close(self) -> None:
        if self._requests is not None:
            await self._requests.close()

    def _remember(self, digest: str, data: bytes) -> None:
        """Keep ``data`` (whose digest is ``digest``) in memory, the oldest out first."""
        if len(data) > self._recent_max // 16 or digest in self._recent:
            return
        self._recent[digest] = data
        self._recent_size += len(data)
        while self._recent_size > self._recent_max:
            _, old = self._recent.popitem(last=False)
            self._recent_size -= len(old)

    async def _small(self, digest: str) -> bytes | None:
        kv = await self._blob_kv()
        try:
            entry = await kv.get(digest.removeprefix("sha256:"))
        except (KeyNotFoundError, NotFoundError):
            return None
        return entry.value or b""

    def recent(self, digest: str) -> bytes | None:
        data = self._recent.get(digest)
        if data is not None:
            self._recent.move_to_end(digest)
        return data

    async def get(self, digest: str) -> bytes:
        recent = self.recent(digest)
        if recent is not None:
            return recent
        small = await self._small(digest)
        if small is not None:
            data = _verified(digest, small)
            self._remember(digest, data)
            return data
        store = await self._js.object_store(self._bucket)
        try:
            result = await store.get(_name(digest))
        except (ObjectNotFoundError, NotFoundError):
            raise ArtifactNotFound(
                f"no artifact {digest} in bucket {self._bucket}: it was never stored here, "
                "or this is a different server than the one that ran the phase"
            ) from None
        return _verified(digest, result.data or b"")

    async def exists(self, digest: str) -> bool:
        if await self._small(digest) is not None:
            return True
        store = await self._js.object_store(self._bucket)
        try:
            await store.get_info(_name(digest))
        except (ObjectNotFoundError, NotFoundError):
            return False
        return True
