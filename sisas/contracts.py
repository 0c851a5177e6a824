"""Contracts of numpy arrays and tables, and what sisas can store.

A phase's annotations are its contracts. Most are checked by pydantic; a numpy array
(``np.ndarray``, ``npt.NDArray[...]``) or a table (``pd.DataFrame``, ``pa.Table``) is
stored in a binary form of its own and checked by the :class:`Array` or :class:`Table`
in its ``Annotated`` metadata (both exported by :mod:`sisas.pipeline`)::

    Vectors = Annotated[np.ndarray, Array(dtype="float64", shape=(None, 3))]
    Prices = Annotated[pd.DataFrame, Table(columns={"sku": "string", "price": "float64"})]

:func:`binary_form` says what an annotation asks for; :func:`check_output` and
:func:`check_parameter` refuse, when a phase is registered, an annotation whose values
sisas could never store or read back, naming what to write instead. pandas and pyarrow
are never imported here unless a table annotation needs pyarrow.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Final,
    Literal,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import numpy as np
import pydantic

from sisas.errors import InvalidPipeline

__all__ = [
    "Array",
    "BinaryForm",
    "BinaryKind",
    "Table",
    "annotations_of",
    "binary_form",
    "binary_name",
    "check_output",
    "check_parameter",
    "shape_text",
    "without_none",
]


@dataclass(frozen=True, init=False)
class Array:
    """The contract of a numpy array output or input, as metadata of its annotation::

        Vectors = Annotated[np.ndarray, Array(dtype="float64", shape=(None, 3))]

    ``dtype``: the array's dtype, anything ``numpy.dtype`` takes (``"float64"``,
    ``np.int32``), byte order aside; None for any. ``shape``: one entry per dimension, an
    int for a fixed length or None for any; None (the default) for any number of
    dimensions. Checked where the array leaves a phase (``exit``) and where it enters one
    (``entry``); each violation names its field: ``output.dtype``, ``output.shape[1]``.
    ``numpy.typing.NDArray[np.float64]`` states a dtype as well. Raises
    :class:`InvalidPipeline` for a dtype numpy does not know or that cannot be stored.
    """

    dtype: np.dtype[Any] | None
    shape: tuple[int | None, ...] | None

    def __init__(self, dtype: Any = None, shape: Sequence[int | None] | None = None) -> None:
        try:
            kind = None if dtype is None else np.dtype(dtype)
        except TypeError as exc:
            raise InvalidPipeline(
                f"Array(dtype={dtype!r}): {exc}; give a numpy dtype such as 'float64' or np.int32"
            ) from None
        if kind is not None and kind.hasobject:
            raise InvalidPipeline(
                "Array(dtype=object): an object array cannot be stored (it would be "
                "pickled): use a numeric, bool, datetime or string dtype, or a table"
            )
        dims = None if shape is None else tuple(shape)
        if dims is not None and not all(d is None or (type(d) is int and d >= 0) for d in dims):
            raise InvalidPipeline(
                f"Array(shape={shape!r}): give one length (an int >= 0) or None per "
                "dimension, e.g. (None, 3)"
            )
        object.__setattr__(self, "dtype", kind)
        object.__setattr__(self, "shape", dims)

    def __repr__(self) -> str:
        dtype = [] if self.dtype is None else [f"dtype={self.dtype.name!r}"]
        shape = [] if self.shape is None else [f"shape={shape_text(self.shape)}"]
        return f"Array({', '.join(dtype + shape)})"

    @property
    def text(self) -> str:
        """``float64, (None, 3)``: what the contract asks, as contract names show it."""
        parts = [] if self.dtype is None else [self.dtype.name]
        if self.shape is not None:
            parts.append(shape_text(self.shape))
        return ", ".join(parts)


def shape_text(shape: Sequence[int | None]) -> str:
    """``(None, 3)``, ``(5,)``: a shape as Python writes a tuple, None for any length."""
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner}{',' if len(shape) == 1 else ''})"


@dataclass(frozen=True, init=False)
class Table:
    """The contract of a table output or input (a pandas DataFrame or a pyarrow Table),
    as metadata of its annotation::

        -> Annotated[pd.DataFrame, Table(columns={"day": "date32", "price": "float64"})]

    ``columns``: each column the table must have (in any order) and its type: an Arrow
    type or its name (``"int64"``, ``"float64"`` or ``"double"``, ``"string"``,
    ``"bool"``, ``"timestamp[ns]"``, ``"date32"``), a numpy dtype name
    (``"datetime64[ns]"``), a Python type (``int``, ``float``, ``str``, ``bool``), or None
    for any type. ``strict=True``: no other columns. Types are those of the table's Arrow
    form, which is what is stored (a DataFrame's ``float64`` is ``double``; ``string``
    covers ``large_string``). A violation names its column: ``output.columns.price``.
    """

    columns: tuple[tuple[str, Any], ...]
    strict: bool

    def __init__(self, columns: Mapping[str, Any] | None = None, *, strict: bool = False) -> None:
        object.__setattr__(self, "columns", tuple((str(k), v) for k, v in (columns or {}).items()))
        object.__setattr__(self, "strict", strict)

    def __repr__(self) -> str:
        columns = ", ".join(
            f"{n!r}: {'None' if t is None else repr(_column_type_text(t))}" for n, t in self.columns
        )
        return f"Table(columns={{{columns}}}{', strict=True' if self.strict else ''})"

    @property
    def text(self) -> str:
        """``day: date32, price: float64``: the contract as contract names show it."""
        cols = [n if t is None else f"{n}: {_column_type_text(t)}" for n, t in self.columns]
        return ", ".join(cols + (["strict"] if self.strict else []))

    def arrow_types(self) -> list[tuple[str, Any]]:
        """Each column and its Arrow type (None: any). Needs pyarrow; raises
        :class:`InvalidPipeline` for a type that names no Arrow type."""
        pa = importlib.import_module("pyarrow")
        return [(name, None if t is None else _arrow_type(pa, name, t)) for name, t in self.columns]


_PYTHON_COLUMN_TYPES: Final = {int: "int64", float: "float64", str: "string", bool: "bool"}


def _column_type_text(t: Any) -> str:
    if isinstance(t, type):
        return _PYTHON_COLUMN_TYPES.get(t) or np.dtype(t).name
    return str(t)


def _arrow_type(pa: Any, column: str, t: Any) -> Any:
    if isinstance(t, pa.DataType):
        return t
    try:
        if isinstance(t, str):
            try:
                return pa.type_for_alias(t)
            except (ValueError, KeyError):
                return pa.from_numpy_dtype(np.dtype(t))
        return (
            pa.type_for_alias(_PYTHON_COLUMN_TYPES[t])
            if t in _PYTHON_COLUMN_TYPES
            else (pa.from_numpy_dtype(np.dtype(t)))
        )
    except (TypeError, ValueError, KeyError, pa.ArrowException):
        raise InvalidPipeline(
            f"Table column {column!r}: {t!r} is no Arrow type; name one (int64, float64, "
            "string, bool, timestamp[ns], date32…) or pass a pyarrow DataType"
        ) from None


BinaryKind = Literal["array", "pandas", "arrow"]
"""How a binary value is held: a numpy array, a pandas DataFrame, a pyarrow Table."""


@dataclass(frozen=True)
class BinaryForm:
    """What an annotation of a numpy array or a table asks for (workers read it to store
    and check such values): its kind and its contract."""

    kind: BinaryKind
    contract: Array | Table | None = None

    @property
    def label(self) -> str:
        return _LABELS[self.kind]


_LABELS: Final = {
    "array": "a numpy array",
    "pandas": "a pandas DataFrame",
    "arrow": "a pyarrow Table",
}
_TABLE_CLASSES: Final[dict[tuple[str, str], BinaryKind]] = {
    ("pandas", "DataFrame"): "pandas",
    ("pyarrow", "Table"): "arrow",
}


_FORMS: dict[Any, BinaryForm | None] = {}


def binary_form(annotation: Any) -> BinaryForm | None:
    """The binary form ``annotation`` names: ``np.ndarray`` (or ``npt.NDArray[...]``),
    ``pd.DataFrame`` or ``pa.Table``, perhaps ``Annotated`` with an :class:`Array` or
    :class:`Table` contract; None for any other annotation (stored as JSON).

    Known per annotation once (every attempt asks, for each input and its output)."""
    try:
        return _FORMS[annotation]
    except KeyError:
        form = _FORMS[annotation] = _binary_form(annotation)
        return form
    except TypeError:  # an annotation that cannot be a key (unhashable metadata)
        return _binary_form(annotation)


def _binary_form(annotation: Any) -> BinaryForm | None:
    base, marks = _annotated(annotation)
    kind = _binary_kind(base)
    if kind is None:
        return None
    contract = next((m for m in reversed(marks) if isinstance(m, Array | Table)), None)
    dtype = _ndarray_dtype(base) if kind == "array" else None
    if dtype is not None and (
        contract is None or (isinstance(contract, Array) and contract.dtype is None)
    ):
        contract = Array(dtype, None if contract is None else contract.shape)
    return BinaryForm(kind, contract)


def _annotated(t: Any) -> tuple[Any, tuple[Any, ...]]:
    if get_origin(t) is Annotated:
        base, *marks = get_args(t)
        return base, tuple(marks)
    return t, ()


def _binary_kind(t: Any) -> BinaryKind | None:
    if t is np.ndarray or get_origin(t) is np.ndarray:
        return "array"
    if isinstance(t, type):
        return _TABLE_CLASSES.get((t.__module__.partition(".")[0], t.__qualname__))
    return None


def _ndarray_dtype(t: Any) -> np.dtype[Any] | None:
    """The dtype of ``npt.NDArray[np.float64]``; None for a plain or generic ndarray."""
    args = get_args(t)
    scalar = get_args(args[1]) if len(args) == 2 else ()
    if scalar and isinstance(scalar[0], type) and issubclass(scalar[0], np.generic):
        try:
            return np.dtype(scalar[0])
        except TypeError:  # an abstract type such as np.floating
            return None
    return None


def binary_name(t: Any) -> str | None:
    """The contract name of an array or table annotation (``ndarray``,
    ``ndarray[float64, (None, 3)]``, ``DataFrame[sku: string, strict]``); None for any
    other annotation."""
    form = binary_form(t)
    if form is None:
        return None
    text = "" if form.contract is None else form.contract.text
    return _BASE_NAMES[form.kind] + (f"[{text}]" if text else "")


_BASE_NAMES: Final = {"array": "ndarray", "pandas": "DataFrame", "arrow": "Table"}


def annotations_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s annotations; ``Annotated`` is kept where it carries an :class:`Array` or
    :class:`Table` contract (elsewhere it is stripped, as it always was)."""
    plain = get_type_hints(fn)
    extra = get_type_hints(fn, include_extras=True)
    return {k: extra[k] if _has_contract(extra[k]) else t for k, t in plain.items()}


def _has_contract(t: Any) -> bool:
    base, marks = _annotated(t)
    if any(isinstance(m, Array | Table) for m in marks):
        return True
    return any(_has_contract(a) for a in get_args(base))


def _text(t: Any) -> str:
    if isinstance(t, type):
        return t.__qualname__
    return repr(t).replace("typing.", "")


def check_output(phase: str, annotation: Any) -> None:
    """Refuse a return annotation whose values sisas cannot store, saying what to
    return instead."""
    _check_contracts(phase, "its output", annotation)
    form = binary_form(annotation)
    if form is not None:
        _check_binary(phase, "its output", form)
    elif _holds_binary(annotation):
        raise InvalidPipeline(
            f"phase {phase} returns {_text(annotation)}, which holds a numpy array or a "
            "table inside: sisas stores an array or a table only as a phase's whole "
            "output (.npy, Arrow IPC); return one (np.stack(...), pd.concat(...)), one per "
            "item of a fan-out (map_over=), or plain data (arr.tolist(), "
            "df.to_dict('records'))"
        )
    elif not _has_schema(annotation):
        raise InvalidPipeline(
            f"phase {phase} returns {_text(annotation)}, which sisas cannot store (pydantic "
            "builds no schema for it): return a pydantic model, a dataclass or plain data "
            "(dict, list, str, int, float, bool), a numpy array (-> np.ndarray) or a table "
            "(-> pd.DataFrame, -> pa.Table); or annotate -> Any to store whichever of "
            "these it returns"
        )


def check_parameter(phase: str, param: str, annotation: Any) -> None:
    """Refuse a parameter annotation no stored output can be read as: an array or a
    table is received whole, or as a fan-out's list of them, and nowhere deeper."""
    where = f"parameter {param}"
    _check_contracts(phase, where, annotation)
    inner = without_none(annotation)
    if get_origin(inner) is list and get_args(inner):
        inner = without_none(get_args(inner)[0])
    form = binary_form(inner)
    if form is not None:
        _check_binary(phase, where, form)
    elif _holds_binary(annotation):
        raise InvalidPipeline(
            f"phase {phase}: {where} is {_text(annotation)}: a phase receives an array or a "
            "table whole (np.ndarray, pd.DataFrame, pa.Table), or a fan-out's list of them "
            "(list[np.ndarray]; list[np.ndarray | None] for a partial one), not inside "
            "another type"
        )
    elif not _has_schema(annotation):
        raise InvalidPipeline(
            f"phase {phase}: {where} is {_text(annotation)}, which sisas cannot build from "
            "a stored output (pydantic builds no schema for it): annotate it with the type "
            "its upstream returns (a pydantic model, a dataclass, plain data, np.ndarray, "
            "pd.DataFrame, pa.Table) or Any"
        )


def without_none(t: Any) -> Any:
    """``X`` for ``X | None`` (``Optional[X]``), else ``t``."""
    if get_origin(t) in (Union, types.UnionType):
        args = [a for a in get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _check_contracts(phase: str, where: str, annotation: Any) -> None:
    """An :class:`Array` contract annotates an array, a :class:`Table` one a table."""
    for base, contract in _contracts(annotation):
        kind = _binary_kind(base)
        if (kind == "array") != isinstance(contract, Array) or kind is None:
            fits = (
                "Annotated[np.ndarray, Array(...)]"
                if isinstance(contract, Array)
                else ("Annotated[pd.DataFrame, Table(...)] or Annotated[pa.Table, Table(...)]")
            )
            raise InvalidPipeline(
                f"phase {phase}: {where}: {contract!r} is a contract of "
                f"{'a numpy array' if isinstance(contract, Array) else 'a table'}, not of "
                f"{_text(base)}: write {fits}"
            )


def _contracts(t: Any) -> Iterator[tuple[Any, Array | Table]]:
    base, marks = _annotated(t)
    for m in marks:
        if isinstance(m, Array | Table):
            yield base, m
    for arg in get_args(base):
        yield from _contracts(arg)


def _check_binary(phase: str, where: str, form: BinaryForm) -> None:
    """A table needs pyarrow where the pipeline is loaded; a Table contract's types must
    name Arrow types."""
    if form.kind == "array":
        return
    try:
        importlib.import_module("pyarrow")
    except ImportError:
        raise InvalidPipeline(
            f"phase {phase}: {where} is {form.label}, stored as Arrow IPC, which needs "
            "pyarrow: pip install pyarrow"
        ) from None
    if isinstance(form.contract, Table):
        try:
            form.contract.arrow_types()
        except InvalidPipeline as exc:
            raise InvalidPipeline(f"phase {phase}: {where}: {exc}") from None


def _holds_binary(t: Any, seen: set[int] | None = None) -> bool:
    """Whether an array or a table appears anywhere in ``t``: its arguments, a pydantic
    model's or a dataclass's fields."""
    seen = set() if seen is None else seen
    base, _ = _annotated(t)
    if _binary_kind(base) is not None:
        return True
    if isinstance(base, type):
        if id(base) in seen:
            return False
        seen.add(id(base))
        if issubclass(base, pydantic.BaseModel):
            return any(_holds_binary(f.annotation, seen) for f in base.model_fields.values())
        if dataclasses.is_dataclass(base):
            try:
                fields = get_type_hints(base)
            except (NameError, TypeError):
                return False
            return any(_holds_binary(f, seen) for f in fields.values())
        return False
    return any(_holds_binary(a, seen) for a in get_args(base))


def _has_schema(annotation: Any) -> bool:
    """Whether pydantic can build a schema for ``annotation`` (it cannot for an arbitrary
    class); other errors are left to the phase's first run, as before."""
    try:
        pydantic.TypeAdapter(annotation)
    except pydantic.PydanticSchemaGenerationError:
        return False
    except (pydantic.PydanticUserError, NameError):
        return True
    return True
