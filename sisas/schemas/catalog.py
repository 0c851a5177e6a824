"""The signal catalog (docs/signals.md), generated from the Structs like the schemas."""

from __future__ import annotations

import inspect as pyinspect

import msgspec
import msgspec.inspect as mi

from sisas.signals.envelope import Signal
from sisas.signals.kinds import KINDS, ErrorInfo, Resources, Violation

__all__ = ["catalog_markdown"]

_HEADER = """# Signal catalog

Generated from `sisas/signals/` by `sisas.schemas.catalog_markdown()`; a test fails when
this page drifts from the code. JSON Schemas: `sisas schema export DIR`, or the committed
copies in `sisas/schemas/json/`. Every signal is the envelope below with one body; the
body's `kind` is its tag. Fields equal to their default are omitted on the wire.

In the log, the signals of one decision are stored together as one message, a commit
(`{"commit":2,"signals":[...]}` on `sisas.run.<pipeline>.<run>.c`, schema
`commit.json`), each in its own canonical bytes; see the append protocol in
[concepts.md](concepts.md#the-append-protocol-a-decision-is-one-write).
"""


def _type(t: mi.Type) -> str:
    if isinstance(t, mi.StrType):
        return "str" + (f" `{t.pattern}`".replace("|", "\\|") if t.pattern else "")
    if isinstance(t, mi.IntType):
        return "int" + (f" ≥ {t.ge}" if t.ge is not None else "")
    if isinstance(t, mi.FloatType):
        return "float"
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.DateTimeType):
        return "datetime (UTC, RFC 3339)"
    if isinstance(t, mi.LiteralType):
        return " \\| ".join(f"`{v}`" for v in t.values)
    if isinstance(t, mi.UnionType):
        return " \\| ".join(_type(x) for x in t.types)
    if isinstance(t, mi.ListType):
        return f"list[{_type(t.item_type)}]"
    if isinstance(t, mi.DictType):
        return f"dict[{_type(t.key_type)}, {_type(t.value_type)}]"
    if isinstance(t, mi.StructType):
        return t.cls.__name__
    return type(t).__name__


def _table(cls: type, skip: frozenset[str] = frozenset()) -> list[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    rows = ["| field | type | default |", "|---|---|---|"]
    for f in info.fields:
        if f.name in skip:
            continue
        if f.required:
            default = "required"
        elif f.default is not msgspec.NODEFAULT:
            default = f"`{f.default!r}`"
        else:
            default = f"`{f.default_factory()!r}`"
        rows.append(f"| `{f.encode_name}` | {_type(f.type)} | {default} |")
    return rows


def _doc(cls: type) -> str:
    text = " ".join(pyinspect.cleandoc(cls.__doc__ or "").split())
    return text.replace("``", "`").replace(":data:", "")


def catalog_markdown() -> str:
    """The whole catalog page as Markdown."""
    out = [_HEADER, "## Envelope", "", _doc(Signal), "", *_table(Signal), ""]
    out += ["## Kinds", ""]
    out += ["| kind | meaning |", "|---|---|"]
    out += [f"| [`{k}`](#{k}) | {_doc(c).split('. ')[0].rstrip('.')} |" for k, c in KINDS.items()]
    out.append("")
    for kind, cls in KINDS.items():
        out += [f"### {kind}", "", _doc(cls), "", *_table(cls, frozenset({"kind"})), ""]
    out += ["## Shared parts", ""]
    for part in (ErrorInfo, Violation, Resources):
        out += [f"### {part.__name__}", "", _doc(part), "", *_table(part), ""]
    return "\n".join(out)
