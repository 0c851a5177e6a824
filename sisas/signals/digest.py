"""Semantic digests: what a phase output *is*, independent of how it was produced.

``semantic_digest(value)`` is ``sha256:<hex>`` over a canonical, type-tagged encoding
of the value's content. Times, hosts and attempt numbers never enter it unless they
are part of the value itself. Supported: None, bool, int, float (NaN and infinities
included), str, bytes, lists and tuples, dicts (key order never matters), sets,
pydantic models, msgspec Structs, dataclasses, dates and times, numpy arrays and
scalars (by dtype, shape and bytes), and tables: pandas DataFrames and pyarrow Tables, by
their Arrow form (:func:`arrow_table`): the column names and types in order, then each
column's values, never chunking, memory layout or an index that only numbers the rows,
so the same data as a DataFrame and as a Table digest alike. Anything else raises
``TypeError`` naming it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import hashlib
import importlib
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import msgspec

__all__ = [
    "Hasher",
    "arrow_table",
    "arrow_type_name",
    "bytes_digest",
    "is_table",
    "semantic_digest",
]

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
        self._h.update(b"".join((tag, len(payload).to_bytes(8, "big"), payload)))

    def feed(self, value: object) -> None:
        kind = type(value)  # the common exact types first: the same tokens, fewer checks
        if kind is str:
            self._token(b"S", value.encode("utf-8"))  # type: ignore[attr-defined]
        elif kind is dict:
            self._mapping(value)  # type: ignore[arg-type]
        elif kind is bool:
            self._token(b"B", b"1" if value else b"0")
        elif kind is int:
            self._token(b"I", str(value).encode())
        elif value is None:
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
        elif is_table(value):
            self._table(arrow_table(value))
        else:
            raise TypeError(
                f"cannot digest a value of type {type(value).__qualname__}: return plain "
                "data, a pydantic model, a msgspec Struct, a dataclass, a numpy array or a "
                "table (a pandas DataFrame, a pyarrow Table)"
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

    def _table(self, table: Any) -> None:
        self._token(b"R", f"{table.num_columns}:{table.num_rows}".encode())
        for field, column in zip(table.schema, table.columns, strict=True):
            self._token(b"C", field.name.encode("utf-8"))
            self._token(b"c", arrow_type_name(field.type).encode())
            self._column(column.combine_chunks())

    def _column(self, column: Any) -> None:
        """Fixed-width columns as their validity bits and their values' bytes (nulls
        filled with zero); any other column value by value (``None`` for a null)."""
        pa = _pyarrow("digested")
        kind = column.type
        if _fixed_width(pa.types, kind):
            valid = b""
            if column.null_count:
                bits = column.is_valid().to_numpy(zero_copy_only=False)
                valid = _packed(bits)
                zero = pa.scalar(False if pa.types.is_boolean(kind) else 0, type=kind)
                column = column.fill_null(zero)
            self._token(b"V", valid)
            self._numpy(column.to_numpy(zero_copy_only=False))
            return
        self._token(b"W", str(len(column)).encode())
        for item in column.to_pylist():
            self.feed(str(item) if isinstance(item, Decimal) else item)


def _fixed_width(types: Any, kind: Any) -> bool:
    return bool(
        types.is_integer(kind)
        or types.is_floating(kind)
        or types.is_boolean(kind)
        or types.is_timestamp(kind)
        or types.is_date(kind)
        or types.is_duration(kind)
    )


def _packed(bits: Any) -> bytes:
    import numpy as np

    return bytes(np.packbits(bits).tobytes())


def _pyarrow(what: str) -> Any:
    try:
        return importlib.import_module("pyarrow")
    except ImportError:
        raise TypeError(
            f"a table is {what} in its Arrow form, which needs pyarrow: pip install pyarrow"
        ) from None


def is_table(value: object) -> bool:
    """Whether ``value`` is a pandas DataFrame (or a subclass) or a pyarrow Table,
    found without importing either library."""
    return any(
        (c.__module__.partition(".")[0], c.__qualname__) in _TABLE_TYPES
        for c in type(value).__mro__
    )


_TABLE_TYPES: Final = {("pandas", "DataFrame"), ("pyarrow", "Table")}


def arrow_table(value: object) -> Any:
    """The Arrow form of a table: what is stored and digested.

    A pyarrow Table is its own form. A pandas DataFrame is converted by
    ``pyarrow.Table.from_pandas``; its index is kept (as columns after the others) unless
    it only numbers the rows (0, 1, 2…, unnamed, whether a RangeIndex or not). Raises
    ``TypeError`` naming the fix when pyarrow is missing or a column cannot be converted.
    """
    pa = _pyarrow("stored and digested")
    if isinstance(value, pa.Table):
        return value
    import numpy as np

    index = value.index  # type: ignore[attr-defined]
    numbers_rows = (
        index.nlevels == 1
        and index.name is None
        and index.dtype.kind in "iu"
        and np.array_equal(index.to_numpy(), np.arange(len(index)))
    )
    try:
        return pa.Table.from_pandas(value, preserve_index=not numbers_rows)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise TypeError(
            f"this DataFrame cannot be converted to Arrow ({exc}): give each column one "
            "type (df.astype(...)) and each column a distinct name"
        ) from None


_LARGE: Final = re.compile(r"\blarge_(string|binary|list)\b|\b(string|binary|list)_view\b")


def arrow_type_name(kind: object) -> str:
    """An Arrow type's name with its storage variants folded: ``large_string`` and
    ``string_view`` are ``string`` (likewise binary and list), so a DataFrame's strings
    (``large_string`` under pandas 3) and a Table's (``string``) have one name."""
    return _LARGE.sub(lambda m: m.group(1) or m.group(2), str(kind))


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
