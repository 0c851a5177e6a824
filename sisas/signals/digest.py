"""Semantic digests: what a phase output *is*, independent of how it was produced.

``semantic_digest(value)`` is ``sha256:<hex>`` over a canonical, type-tagged encoding
of the value's content. Times, hosts and attempt numbers never enter it unless they
are part of the value itself. Supported: None, bool, int, float (NaN and infinities
included), str, bytes, lists and tuples, dicts (key order never matters), sets,
pydantic models, msgspec Structs, dataclasses, dates and times, and numpy arrays and
scalars (by dtype, shape and bytes). Anything else raises ``TypeError`` naming it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec

__all__ = ["Hasher", "bytes_digest", "semantic_digest"]

_PREFIX: Final = "sha256:"


class Hasher:
    """Feeds a value into sha256 as a stream of tagged, length-prefixed tokens.

    Every token starts with a one-byte type tag, so ``"1"`` and ``1`` and ``[1]`` never
    collide; containers carry their length, so nesting is unambiguous.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def hexdigest(self) -> str:
        return _PREFIX + self._h.hexdigest()

    def _token(self, tag: bytes, payload: bytes) -> None:
        self._h.update(tag)
        self._h.update(len(payload).to_bytes(8, "big"))
        self._h.update(payload)

    def feed(self, value: object) -> None:
        if value is None:
            self._token(b"N", b"")
        elif isinstance(value, bool):
            self._token(b"B", b"1" if value else b"0")
        elif isinstance(value, enum.Enum):
            self.feed(value.value)
        elif isinstance(value, int):
            self._token(b"I", str(value).encode())
        elif isinstance(value, float):
            self._token(b"F", _float_text(value))
        elif isinstance(value, str):
            self._token(b"S", value.encode("utf-8"))
        elif isinstance(value, bytes | bytearray | memoryview):
            self._token(b"Y", bytes(value))
        elif isinstance(value, Mapping):
            self._mapping(value)
        elif isinstance(value, list | tuple):
            self._token(b"L", str(len(value)).encode())
            for item in value:
                self.feed(item)
        elif isinstance(value, set | frozenset):
            digests = sorted(semantic_digest(v) for v in value)
            self._token(b"E", "\n".join(digests).encode())
        elif isinstance(value, dt.datetime | dt.date | dt.time):
            self._token(b"T", value.isoformat().encode())
        elif isinstance(value, dt.timedelta):
            self._token(b"D", _float_text(value.total_seconds()))
        elif isinstance(value, msgspec.Struct):
            self._mapping(msgspec.structs.asdict(value), type(value).__name__)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            self._mapping(fields, type(value).__name__)
        elif _is_pydantic(value):
            self._mapping(value.model_dump(mode="python"), type(value).__name__)  # type: ignore[attr-defined]
        elif _is_numpy(value):
            self._numpy(value)
        else:
            raise TypeError(
                f"cannot digest a value of type {type(value).__qualname__}: return plain "
                "data, a pydantic model, a msgspec Struct, a dataclass or a numpy array"
            )

    def _mapping(self, value: Mapping[Any, Any], name: str = "") -> None:
        keyed = sorted(((_key_digest(k), k, v) for k, v in value.items()), key=lambda t: t[0])
        self._token(b"M", f"{name}:{len(keyed)}".encode())
        for _, key, item in keyed:
            self.feed(key)
            self.feed(item)

    def _numpy(self, value: object) -> None:
        import numpy as np

        if isinstance(value, np.generic):
            self.feed(value.item())
            return
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            self._token(b"O", repr(arr.shape).encode())
            for item in arr.reshape(-1).tolist():
                self.feed(item)
            return
        # Byte order is normalised to little-endian so equal arrays digest equally.
        canon = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        self._token(b"A", f"{canon.dtype.str}:{canon.shape}".encode())
        self._token(b"a", canon.tobytes())


def _float_text(value: float) -> bytes:
    if math.isnan(value):
        return b"nan"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    return float.__repr__(value).encode()  # not repr(): numpy 2 prints np.float64(…)


def _is_pydantic(value: object) -> bool:
    return hasattr(value, "model_dump") and hasattr(type(value), "model_fields")


def _is_numpy(value: object) -> bool:
    return type(value).__module__.split(".")[0] == "numpy"


def _key_digest(key: object) -> str:
    """:func:`semantic_digest` of a mapping key, memoised for the names that repeat
    (phase names, check names, field names)."""
    if type(key) is str and len(key) <= 256:
        return _str_digest(key)
    return semantic_digest(key)


@functools.lru_cache(maxsize=65_536)
def _str_digest(key: str) -> str:
    return semantic_digest(key)


def semantic_digest(value: object) -> str:
    """``sha256:<hex>`` of ``value``'s content; equal content gives an equal digest.

    Raises ``TypeError`` for a type it cannot digest faithfully.
    """
    hasher = Hasher()
    hasher.feed(value)
    return hasher.hexdigest()


def bytes_digest(data: bytes) -> str:
    """``sha256:<hex>`` of raw bytes: the key of an artifact (not a semantic digest)."""
    return _PREFIX + hashlib.sha256(data).hexdigest()
