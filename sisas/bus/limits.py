"""Concurrency limits of pipelines and of tags: the KV bucket ``sisas-limits`` and the
stream ``SISAS_ADMIT`` where requests of limited runs wait for admission.

A pipeline's limit is kept under its name (``"3"``); a tag's (``k=v``) under
``tag.<digest of k=v>`` as ``{"tag": "k=v", "limit": 3}`` (a tag value may hold what a
key may not; a pipeline name holds no dot, so the two never meet). A lifted limit is
kept as 0, so the runs still waiting under it are released at once.
"""

from __future__ import annotations

import hashlib
import time

import msgspec
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from sisas.bus.runtime import Bus
from sisas.errors import BusError, UsageError
from sisas.signals.names import ADMIT_PREFIX, ADMIT_STREAM, LIMIT_BUCKET, check_name, parse_tag

__all__ = [
    "LimitCache",
    "clear_limit",
    "clear_tag_limit",
    "ensure_admit_stream",
    "limit_of",
    "limits",
    "set_limit",
    "set_tag_limit",
    "tag_limits",
]

_TAG_PREFIX = "tag."


class _TagLimit(msgspec.Struct, frozen=True):
    tag: str
    limit: int


def _tag_key(tag: str) -> str:
    return _TAG_PREFIX + hashlib.sha256(tag.encode()).hexdigest()[:24]


def _refused(what: str, exc: Exception) -> BusError:
    return BusError(
        f"cannot {what}: {exc}; check the server (`sisas status`) and this user's permissions"
    )


async def _bucket(bus: Bus, *, create: bool) -> KeyValue | None:
    try:
        return await bus.js.key_value(LIMIT_BUCKET)
    except (NotFoundError, BucketNotFoundError):
        if not create:
            return None
        return await bus.js.create_key_value(
            bucket=LIMIT_BUCKET, history=1, replicas=bus.settings.replicas
        )


async def ensure_admit_stream(bus: Bus) -> None:
    """Create ``SISAS_ADMIT`` unless it exists."""
    try:
        await bus.js.stream_info(ADMIT_STREAM)
    except NotFoundError:
        await bus.js.add_stream(
            StreamConfig(
                name=ADMIT_STREAM,
                subjects=[f"{ADMIT_PREFIX}.>"],
                storage="file",  # type: ignore[arg-type]
                num_replicas=bus.settings.replicas,
                duplicate_window=120,
            )
        )


async def set_limit(bus: Bus, pipeline: str, limit: int) -> int | None:
    """At most ``limit`` runs of ``pipeline`` at once; return the limit it replaces."""
    check_name(pipeline, "pipeline name")
    if limit < 1:
        raise UsageError(f"a limit of {limit} would start nothing: give 1 or more")
    try:
        await ensure_admit_stream(bus)
        kv = await _bucket(bus, create=True)
        assert kv is not None
        before = await limit_of(bus, pipeline)
        await kv.put(pipeline, str(limit).encode())
    except NatsError as exc:
        raise _refused(f"set the limit of {pipeline}", exc) from None
    return before


async def clear_limit(bus: Bus, pipeline: str) -> int | None:
    """Lift ``pipeline``'s limit; return it (None: it had none). It is kept as 0 (no
    limit), so the admission service releases the runs still waiting at once."""
    before = await limit_of(bus, check_name(pipeline, "pipeline name"))
    if before is not None:
        kv = await _bucket(bus, create=False)
        assert kv is not None
        try:
            await kv.put(pipeline, b"0")
        except NatsError as exc:
            raise _refused(f"clear the limit of {pipeline}", exc) from None
    return before


async def limits(bus: Bus, *, cleared: bool = False) -> dict[str, int]:
    """Every pipeline's limit (``cleared``: also the lifted ones, as 0)."""
    try:
        kv, keys = await _keys(bus)
        out = {}
        for key in keys:
            if key.startswith(_TAG_PREFIX):
                continue
            assert kv is not None
            n = await _stored(kv, key)
            if n is not None and (n > 0 or cleared):
                out[key] = n
        return out
    except NatsError as exc:
        raise _refused("read the concurrency limits", exc) from None


async def _keys(bus: Bus) -> tuple[KeyValue | None, list[str]]:
    """The limits bucket and its keys (pipelines, and ``_TAG_PREFIX`` + tag); none
    when the bucket or its keys do not exist yet."""
    kv = await _bucket(bus, create=False)
    if kv is None:
        return None, []
    try:
        return kv, list(await kv.keys())
    except (NoKeysError, NotFoundError):
        return kv, []


async def _stored(kv: KeyValue, pipeline: str) -> int | None:
    try:
        entry = await kv.get(pipeline)
    except KeyNotFoundError:
        return None
    try:
        return int(entry.value or b"")
    except ValueError:
        return None


async def limit_of(bus: Bus, pipeline: str) -> int | None:
    """``pipeline``'s limit, None when it has none (or it was lifted)."""
    try:
        kv = await _bucket(bus, create=False)
        if kv is None:
            return None
        n = await _stored(kv, pipeline)
    except NatsError as exc:
        raise _refused(f"read the limit of {pipeline}", exc) from None
    return n if n is not None and n > 0 else None


def _tag_text(tag: str) -> str:
    key, value = parse_tag(tag)
    return f"{key}={value}"


async def set_tag_limit(bus: Bus, tag: str, limit: int) -> int | None:
    """At most ``limit`` runs carrying the tag ``k=v`` at once; return the limit it
    replaces. Raises :class:`UsageError` for a bad tag or limit."""
    tag = _tag_text(tag)
    if limit < 1:
        raise UsageError(f"a limit of {limit} would start nothing: give 1 or more")
    try:
        await ensure_admit_stream(bus)
        kv = await _bucket(bus, create=True)
        assert kv is not None
        before = (await tag_limits(bus)).get(tag)
        await kv.put(_tag_key(tag), msgspec.json.encode(_TagLimit(tag, limit)))
    except NatsError as exc:
        raise _refused(f"set the limit of tag {tag}", exc) from None
    return before


async def clear_tag_limit(bus: Bus, tag: str) -> int | None:
    """Lift the limit of tag ``k=v``; return it (None: it had none)."""
    tag = _tag_text(tag)
    before = (await tag_limits(bus)).get(tag)
    if before is not None:
        kv = await _bucket(bus, create=False)
        assert kv is not None
        try:
            await kv.put(_tag_key(tag), msgspec.json.encode(_TagLimit(tag, 0)))
        except NatsError as exc:
            raise _refused(f"clear the limit of tag {tag}", exc) from None
    return before


async def tag_limits(bus: Bus, *, cleared: bool = False) -> dict[str, int]:
    """Every tag's limit by ``k=v`` (``cleared``: also the lifted ones, as 0)."""
    try:
        kv, keys = await _keys(bus)
        out = {}
        for key in keys:
            if not key.startswith(_TAG_PREFIX):
                continue
            assert kv is not None
            try:
                entry = await kv.get(key)
                stored = msgspec.json.decode(entry.value or b"", type=_TagLimit)
            except (KeyNotFoundError, msgspec.DecodeError):
                continue
            if stored.limit > 0 or cleared:
                out[stored.tag] = stored.limit
        return out
    except NatsError as exc:
        raise _refused("read the concurrency limits of tags", exc) from None


class LimitCache:
    """:func:`limit_of`, remembered for ``ttl`` seconds (a batch asks once per pipeline)."""

    def __init__(self, bus: Bus, ttl: float = 2.0) -> None:
        self.bus = bus
        self.ttl = ttl
        self._seen: dict[str, tuple[float, int | None]] = {}
        self._tags: tuple[float, dict[str, int]] | None = None

    async def tags(self) -> dict[str, int]:
        """:func:`tag_limits`, remembered for ``ttl`` seconds."""
        now = time.monotonic()
        hit = self._tags
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = await tag_limits(self.bus)
        self._tags = (now, value)
        return value

    async def admits(self, pipeline: str, tags: dict[str, str]) -> bool:
        """Whether a run of ``pipeline`` with ``tags`` waits for admission: its pipeline
        or one of its tags has a limit."""
        if await self.get(pipeline) is not None:
            return True
        limited = await self.tags()
        return any(f"{k}={v}" in limited for k, v in tags.items())

    async def get(self, pipeline: str) -> int | None:
        now = time.monotonic()
        hit = self._seen.get(pipeline)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = await limit_of(self.bus, pipeline)
        self._seen[pipeline] = (now, value)
        return value
