"""Field-level differences between two values: JSON-like data, numpy arrays, tables."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from sisas.handlers import binary
from sisas.replay.verdicts import FieldDiff
from sisas.signals.digest import arrow_table, arrow_type_name, is_table

__all__ = ["field_diff", "output_value"]


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def output_value(data: bytes | None) -> object:
    """A stored output as :func:`field_diff` compares it: JSON decoded, an array as its
    ndarray, a table as its pyarrow Table; bytes that are none of these (or a table
    without pyarrow here) as text."""
    if data is None:
        return None
    stored = binary.format_of(data)
    try:
        if stored != "json":
            return binary.decode(data, "array" if stored == "npy" else "arrow")
        return json.loads(data)
    except (ValueError, binary.Unstorable):
        return data.decode("utf-8", "replace")


def field_diff(recorded: Any, new: Any, *, path: str = "", limit: int = 50) -> list[FieldDiff]:
    """The leaves where ``recorded`` and ``new`` differ, in document order, at most ``limit``.

    Dicts are compared key by key (a missing key shows as None), lists item by item (a
    length difference shows at ``path.length``); anything else by equality, with ``1``
    and ``1.0`` and ``True`` told apart. Arrays are compared element by element, each
    difference at its index (``path[3, 1]``; a dtype or shape difference at
    ``path.dtype``, ``path.shape``); tables (pyarrow Tables, pandas DataFrames, by their
    Arrow form) by schema (``path.columns.price``, ``path.num_rows``), then cell by cell
    in row order (``path.price[17]``). NaN equals NaN in arrays and tables.
    """
    out: list[FieldDiff] = []
    _walk(recorded, new, path, out, limit)
    return out


def _walk(a: Any, b: Any, path: str, out: list[FieldDiff], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        _arrays(a, b, path, out, limit)
        return
    if is_table(a) or is_table(b):
        _tables(a, b, path or "(value)", out, limit)
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            _walk(a.get(key), b.get(key), _join(path, key), out, limit)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(min(len(a), len(b))):
            _walk(a[i], b[i], _join(path, i), out, limit)
        if len(a) != len(b) and len(out) < limit:
            out.append(FieldDiff(path=_join(path, "length"), recorded=len(a), new=len(b)))
        return
    if type(a) is not type(b) or a != b:
        out.append(FieldDiff(path=path or "(value)", recorded=a, new=b))


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _arrays(a: Any, b: Any, path: str, out: list[FieldDiff], limit: int) -> None:
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        # An array on one side only (the code changed what it returns): compare the data.
        plain = [x.tolist() if isinstance(x, np.ndarray) else _summary(x) for x in (a, b)]
        _walk(plain[0], plain[1], path, out, limit)
        return
    here = path or "(value)"
    if a.dtype != b.dtype:
        out.append(FieldDiff(path=f"{path}.dtype", recorded=str(a.dtype), new=str(b.dtype)))
    if a.shape != b.shape:
        out.append(FieldDiff(path=f"{path}.shape", recorded=list(a.shape), new=list(b.shape)))
        return
    try:
        differ = np.asarray(a != b)
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            differ &= ~(np.isnan(a) & np.isnan(b))
    except (TypeError, ValueError):  # dtypes that cannot be compared element-wise
        return
    if differ.ndim == 0:
        if differ and len(out) < limit:
            out.append(FieldDiff(path=here, recorded=_scalar(a[()]), new=_scalar(b[()])))
        return
    for index in np.argwhere(differ)[: max(0, limit - len(out))]:
        at = tuple(int(i) for i in index)
        out.append(
            FieldDiff(
                path=f"{path}[{', '.join(map(str, at))}]",
                recorded=_scalar(a[at]),
                new=_scalar(b[at]),
            )
        )


def _summary(value: Any) -> Any:
    """What stands for a value that is not an array, beside an array."""
    if is_table(value):
        table = arrow_table(value)
        return f"a table of {table.num_rows} rows and {table.num_columns} columns"
    return value


def _tables(a: Any, b: Any, path: str, out: list[FieldDiff], limit: int) -> None:
    if not (is_table(a) and is_table(b)):
        out.append(FieldDiff(path=path, recorded=_summary(a), new=_summary(b)))
        return
    ta, tb = arrow_table(a), arrow_table(b)
    types_a = {f.name: arrow_type_name(f.type) for f in ta.schema}
    types_b = {f.name: arrow_type_name(f.type) for f in tb.schema}
    for name in list(types_a) + [n for n in types_b if n not in types_a]:
        if types_a.get(name) != types_b.get(name) and len(out) < limit:
            out.append(
                FieldDiff(
                    path=f"{path}.columns.{name}",
                    recorded=types_a.get(name),
                    new=types_b.get(name),
                )
            )
    if ta.num_rows != tb.num_rows and len(out) < limit:
        out.append(FieldDiff(path=f"{path}.num_rows", recorded=ta.num_rows, new=tb.num_rows))
    rows = min(ta.num_rows, tb.num_rows)
    cells: list[tuple[int, int, str, Any, Any]] = []
    for position, name in enumerate(n for n in types_a if n in types_b):
        va = _column(ta.column(name).slice(0, rows))
        vb = _column(tb.column(name).slice(0, rows))
        for row in _differing_rows(va, vb)[:limit]:
            cells.append((row, position, name, _scalar(va[row]), _scalar(vb[row])))
    for row, _, name, rec, new in sorted(cells, key=lambda c: c[:2]):
        if len(out) >= limit:
            return
        out.append(FieldDiff(path=f"{path}.{name}[{row}]", recorded=rec, new=new))


def _column(column: Any) -> np.ndarray[Any, Any]:
    """A column's values: its numpy array when it has a fixed-width type and no null,
    else its Python values (None for a null) in an object array."""
    column = column.combine_chunks()
    if column.null_count == 0:
        values = column.to_numpy(zero_copy_only=False)
        if not values.dtype.hasobject:
            return np.asarray(values)
    items = np.empty(len(column), dtype=object)
    items[:] = column.to_pylist()
    return items


def _differing_rows(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> list[int]:
    if a.dtype.hasobject or b.dtype.hasobject:
        return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not _same(x, y)]
    try:
        differ = np.asarray(a != b)
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            differ &= ~(np.isnan(a) & np.isnan(b))
    except (TypeError, ValueError):
        return [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not _same(x, y)]
    return [int(i) for i in np.flatnonzero(differ)]


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return bool(x == y)
