"""Binary phase outputs: numpy arrays stored as ``.npy``, tables as Arrow IPC files.

An output is stored as bytes, by their digest. JSON is the default; a numpy array is
stored in numpy's ``.npy`` format (``numpy.lib.format``, never pickled) and a table (a
pandas DataFrame or a pyarrow Table) as an Arrow IPC *file* of its Arrow form
(:func:`sisas.signals.digest.arrow_table`). The three tell themselves apart by their
first bytes (``\\x93NUMPY``, ``ARROW1``; neither starts a JSON document), so an artifact
says what it is and no signal has to. pandas and pyarrow are imported only when a table
is met: a worker without them runs every other phase.

Pure: bytes and values in, bytes, values and violations out.
"""

from __future__ import annotations

import importlib
import io
from typing import Any, Final, Literal

import numpy as np

from sisas.pipeline import Array, BinaryForm, BinaryKind, Table, shape_text
from sisas.signals.digest import arrow_table, arrow_type_name, is_table, semantic_digest
from sisas.signals.kinds import Violation

__all__ = [
    "ARROW_MAGIC",
    "NPY_MAGIC",
    "ContractBroken",
    "Format",
    "Unstorable",
    "check",
    "decode",
    "digest_of",
    "encode",
    "format_of",
    "from_plain",
    "kind_of",
    "load",
    "plain",
    "prepare",
    "read_back",
    "read_table",
    "stored_kind",
    "unstorable_hint",
]

NPY_MAGIC: Final = b"\x93NUMPY"
ARROW_MAGIC: Final = b"ARROW1"
_KIND_KEY: Final = b"sisas.kind"

Format = Literal["json", "npy", "arrow"]


class Unstorable(ValueError):
    """A value that cannot be stored, or stored bytes that cannot be read here; the
    message says what to do instead."""


class ContractBroken(Exception):
    """A value that breaks its contract; ``violations`` name each field."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__("; ".join(f"{v.path}: {v.message}" for v in violations))
        self.violations = violations


def format_of(data: bytes) -> Format:
    """How stored bytes are encoded, from their first bytes."""
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(ARROW_MAGIC):
        return "arrow"
    return "json"


def kind_of(value: object) -> BinaryKind | None:
    """``array`` for a numpy array, ``pandas`` / ``arrow`` for a table, else None (a
    value stored as JSON). Subclasses of ndarray (masked arrays, matrices) are not
    arrays here: their extra meaning would be lost."""
    if type(value) is np.ndarray:
        return "array"
    if is_table(value):
        return "arrow" if type(value).__module__.startswith("pyarrow") else "pandas"
    return None


def _module(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise Unstorable(f"{what} needs {name}: pip install {name}") from None


def _pyarrow(what: str = "a table (stored as Arrow IPC)") -> Any:
    return _module("pyarrow", what)


def prepare(value: object, form: BinaryForm, root: str) -> tuple[Any, list[Violation]]:
    """The form of ``value`` to store (an ndarray, or a pyarrow Table for any table) and
    the violations of ``form``'s type and contract. The stored form is None when
    ``value`` is not of ``form``'s kind. Raises :class:`Unstorable` for an object array,
    a DataFrame that Arrow cannot hold, or pyarrow missing."""
    kind = kind_of(value)
    if kind != form.kind:
        return None, [_wrong_type(value, form, root)]
    if kind == "array":
        assert isinstance(value, np.ndarray)
        _refuse_objects(value)
        array = form.contract if isinstance(form.contract, Array) else None
        return value, _array_violations(value, array, root)
    table = _arrow_form(value)
    columns = form.contract if isinstance(form.contract, Table) else None
    # What the phase returned, so that `Any` downstream receives the same kind.
    marked = {**(table.schema.metadata or {}), _KIND_KEY: kind.encode()}
    return table.replace_schema_metadata(marked), _table_violations(table.schema, columns, root)


def check(value: object, form: BinaryForm, root: str) -> None:
    """Raise :class:`ContractBroken` unless ``value`` is of ``form``'s kind and meets its
    contract."""
    _, violations = prepare(value, form, root)
    if violations:
        raise ContractBroken(violations)


def load(data: bytes, form: BinaryForm, root: str) -> Any:
    """The value stored binary bytes give a parameter of ``form``, checked against its
    kind and contract (a table's on its Arrow schema, before any conversion). Raises
    :class:`ContractBroken` naming each field, :class:`Unstorable` for bytes this
    process cannot read."""
    if format_of(data) == "arrow" and form.kind != "array":
        table = read_table(data)
        contract = form.contract if isinstance(form.contract, Table) else None
        violations = _table_violations(table.schema, contract, root)
        if violations:
            raise ContractBroken(violations)
        if form.kind == "pandas":
            _module("pandas", "reading a table as a DataFrame")
            return table.to_pandas()
        return table
    value = decode(data, form.kind)
    check(value, form, root)
    return value


def _arrow_form(value: object) -> Any:
    _pyarrow()
    try:
        return arrow_table(value)
    except TypeError as exc:
        raise Unstorable(str(exc)) from None


_OBJECTS: Final = (
    "an array of dtype object cannot be stored (its items would be pickled, which sisas "
    "refuses): return a numeric, bool, datetime or string array (arr.astype(float), "
    "arr.astype(str)), plain data (arr.tolist()) or a table"
)


def _refuse_objects(arr: np.ndarray[Any, Any]) -> None:
    if arr.dtype.hasobject:
        raise Unstorable(_OBJECTS)


def _wrong_type(value: object, form: BinaryForm, root: str) -> Violation:
    return Violation(
        path=root,
        message=f"expected {form.label}, got {_label(value)}",
        type="is_instance_of",
    )


def _label(value: object) -> str:
    kind = kind_of(value)
    if kind is not None:
        return BinaryForm(kind).label
    return "None" if value is None else f"a {type(value).__qualname__}"


def _array_violations(
    arr: np.ndarray[Any, Any], contract: Array | None, root: str
) -> list[Violation]:
    if contract is None:
        return []
    out = []
    if contract.dtype is not None and arr.dtype.newbyteorder("=") != contract.dtype.newbyteorder(
        "="
    ):
        out.append(
            Violation(
                path=f"{root}.dtype",
                message=f"expected dtype {contract.dtype.name}, got {arr.dtype.name}",
                type="array_dtype",
            )
        )
    shape = contract.shape
    if shape is not None and arr.ndim != len(shape):
        out.append(
            Violation(
                path=f"{root}.shape",
                message=f"expected {len(shape)} dimensions {shape_text(shape)}, got "
                f"{arr.ndim}: shape {shape_text(arr.shape)}",
                type="array_ndim",
            )
        )
    elif shape is not None:
        out.extend(
            Violation(
                path=f"{root}.shape[{axis}]",
                message=f"expected length {want}, got {got}",
                type="array_shape",
            )
            for axis, (want, got) in enumerate(zip(shape, arr.shape, strict=True))
            if want is not None and want != got
        )
    return out


def _table_violations(schema: Any, contract: Table | None, root: str) -> list[Violation]:
    if contract is None:
        return []
    got = {f.name: f.type for f in schema}
    out = []
    wanted = contract.arrow_types()
    for name, kind in wanted:
        path = f"{root}.columns.{name}"
        if name not in got:
            want = "" if kind is None else f" ({arrow_type_name(kind)})"
            message = f"missing column {name}{want}; the table has {', '.join(got) or 'none'}"
            out.append(Violation(path=path, message=message, type="table_column_missing"))
        elif kind is not None and arrow_type_name(got[name]) != arrow_type_name(kind):
            message = f"expected {arrow_type_name(kind)}, got {arrow_type_name(got[name])}"
            out.append(Violation(path=path, message=message, type="table_column_type"))
    if contract.strict:
        names = {n for n, _ in wanted}
        out.extend(
            Violation(
                path=f"{root}.columns.{name}",
                message=f"column {name} is not in the contract (strict)",
                type="table_column_extra",
            )
            for name in got
            if name not in names
        )
    return out


def encode(stored: Any) -> bytes:
    """The bytes of a prepared value (:func:`prepare`): ``.npy`` for an array (C order,
    no pickle), an Arrow IPC file of one record batch for a pyarrow Table."""
    if isinstance(stored, np.ndarray):
        _refuse_objects(stored)
        buf = io.BytesIO()
        canon = stored if stored.flags.c_contiguous else stored.copy(order="C")
        np.lib.format.write_array(buf, canon, allow_pickle=False)
        return buf.getvalue()
    pa = _pyarrow()
    table = stored.combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def read_table(data: bytes) -> Any:
    """The pyarrow Table of stored Arrow IPC bytes. Raises :class:`Unstorable` when
    pyarrow is missing or the bytes are not an Arrow file."""
    pa = _pyarrow("reading a table (stored as Arrow IPC)")
    try:
        return pa.ipc.open_file(pa.BufferReader(data)).read_all()
    except pa.ArrowException as exc:
        raise Unstorable(f"the stored table cannot be read: {exc}") from None


def decode(data: bytes, kind: BinaryKind | None = None) -> Any:
    """The value of stored binary bytes: an ndarray for ``.npy``; for an Arrow file a
    DataFrame when ``kind`` is ``pandas``, a pyarrow Table when it is ``arrow``, and
    without ``kind`` what was stored (a DataFrame for a DataFrame, when pandas can be
    imported). Raises :class:`Unstorable` for bytes that are neither, or a missing
    library."""
    stored = format_of(data)
    if stored == "npy":
        try:
            return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise Unstorable(f"the stored array cannot be read: {exc}") from None
    if stored != "arrow":
        raise Unstorable("the stored bytes are JSON, not an array or a table")
    table = read_table(data)
    if kind == "pandas" or (kind is None and stored_kind(table) == "pandas"):
        _module("pandas", "reading a table as a DataFrame")
        return table.to_pandas()
    return table


def stored_kind(table: Any) -> BinaryKind:
    """What a stored table was returned as: ``pandas`` (a DataFrame, when pandas can be
    imported here) or ``arrow``. Arrow files written elsewhere count as DataFrames when
    pyarrow's pandas metadata says they were one."""
    metadata = table.schema.metadata or {}
    kind = metadata.get(_KIND_KEY, b"pandas" if b"pandas" in metadata else b"arrow")
    return "pandas" if kind == b"pandas" and _importable("pandas") else "arrow"


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def read_back(data: bytes, kind: BinaryKind) -> tuple[Any, str]:
    """The value of bytes just stored, as ``kind``, and its semantic digest (a table's
    is over the Arrow form read back, before any conversion to pandas)."""
    if format_of(data) == "npy":
        value = decode(data)
        return value, semantic_digest(value)
    table = read_table(data)
    return (table.to_pandas() if kind == "pandas" else table), semantic_digest(table)


def digest_of(data: bytes) -> str:
    """The semantic digest of stored binary bytes: of the array, or of the table's Arrow
    form, as read back (so a recomputation from the store always agrees)."""
    if format_of(data) == "arrow":
        return semantic_digest(read_table(data))
    return semantic_digest(decode(data))


def plain(value: Any) -> Any:
    """An array or a table as plain data, for a phase that annotates its input as JSON
    types: ``arr.tolist()``, a table's list of row records."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if is_table(value):
        return _arrow_form(value).to_pylist()
    return value


def from_plain(value: Any, form: BinaryForm, root: str) -> Any:
    """Plain data (a JSON input) as ``form`` asks: an array from nested lists (of the
    contract's dtype when it states one and the values fit it safely), a table from a
    list of records or a dict of columns. Raises :class:`ContractBroken` when it cannot
    be one."""
    if form.kind == "array":
        contract = form.contract if isinstance(form.contract, Array) else None
        try:
            raw = np.array(value)
        except ValueError as exc:  # ragged lists
            message = f"expected a numpy array, or nested lists of numbers ({exc})"
            raise ContractBroken(
                [Violation(path=root, message=message, type="array_type")]
            ) from None
        if raw.dtype.hasobject or value is None:
            message = f"expected a numpy array, or nested lists of numbers, got {_label(value)}"
            raise ContractBroken([Violation(path=root, message=message, type="array_type")])
        if contract is None or contract.dtype is None:
            return raw
        # JSON numbers have no width: they take the contract's dtype when they fit it.
        try:
            arr = raw.astype(contract.dtype, casting="same_kind")
            fits = raw.dtype.kind not in "iu" or np.array_equal(arr, raw)
        except TypeError:
            fits = False
        if not fits:
            message = f"expected dtype {contract.dtype.name}, got values of {raw.dtype.name}"
            raise ContractBroken(
                [Violation(path=f"{root}.dtype", message=message, type="array_dtype")]
            )
        return arr
    pa = _pyarrow()
    try:
        if isinstance(value, dict):
            table = pa.table(value)
        elif isinstance(value, list) and all(isinstance(r, dict) for r in value):
            table = pa.Table.from_pylist(value)
        else:
            raise TypeError(f"got {_label(value)}")
    except (TypeError, ValueError, pa.ArrowException) as exc:
        message = f"expected a table: a list of records or a dict of columns ({exc})"
        raise ContractBroken([Violation(path=root, message=message, type="table_type")]) from None
    if form.kind == "pandas":
        _module("pandas", "a DataFrame input")
        return table.to_pandas()
    return table


def unstorable_hint(value: object) -> str:
    """What to return instead of ``value``, a value met inside a JSON output that JSON
    cannot hold."""
    kind = kind_of(value)
    if kind == "array":
        return (
            "it holds a numpy array inside: an array is stored only as a phase's whole "
            "output (.npy); return the array alone (-> np.ndarray; a fan-out for several), "
            "or convert it (arr.tolist())"
        )
    if kind is not None:
        return (
            f"it holds {BinaryForm(kind).label} inside: a table is stored only as a phase's "
            "whole output (Arrow IPC); return the table alone (-> pd.DataFrame, -> pa.Table), "
            "or convert it (df.to_dict('records'))"
        )
    name = type(value).__qualname__
    if type(value).__module__.partition(".")[0] == "pandas" and name == "Series":
        return "it holds a pandas Series: return series.to_frame() (a table) or series.to_numpy()"
    return (
        f"it holds a {name}, which is neither JSON (a pydantic model, a dataclass, dict, "
        "list, str, int, float, bool, None), a numpy array nor a table (a pandas DataFrame, "
        "a pyarrow Table): convert it to one of these"
    )
