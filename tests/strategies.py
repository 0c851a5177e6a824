"""Hypothesis strategies for every signal kind, derived from the Structs themselves."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from sisas.signals import KINDS, ChainHead, Draft, Signal
from tests.conftest import AT

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_digest = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


def _for(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.StrType):
        return _digest if t.pattern and "sha256" in t.pattern else _text
    if isinstance(t, mi.IntType):
        return st.integers(min_value=t.ge if t.ge is not None else -(2**53), max_value=2**53)
    if isinstance(t, mi.FloatType):
        return _finite
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.UnionType):
        return st.one_of([_for(x) for x in t.types])
    if isinstance(t, mi.ListType):
        return st.lists(_for(t.item_type), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(_text, _for(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return _struct(t)
    raise NotImplementedError(t)


def _struct(t: mi.StructType) -> st.SearchStrategy[Any]:
    required = {f.name: _for(f.type) for f in t.fields if f.required}
    optional = {f.name: _for(f.type) for f in t.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: t.cls(**kw))


bodies = st.one_of([_for(mi.type_info(cls)) for cls in KINDS.values()])


@st.composite
def signals(draw: st.DrawFn, n: int = 1) -> list[Signal]:
    """``n`` consecutive, sealed signals of one run with arbitrary bodies."""
    head = ChainHead(pipeline="pipe", run_id=draw(st.from_regex(r"r[a-z0-9]{1,8}", fullmatch=True)))
    drafts = [
        Draft(
            body=draw(bodies),
            at=AT,
            phase=draw(st.sampled_from(["", "load", "fit"])),
            attempt=draw(st.integers(0, 3)),
        )
        for _ in range(n)
    ]
    return head.extend(drafts)[0]


def assert_roundtrip(value: msgspec.Struct) -> None:
    enc = msgspec.json.encode(value)
    assert msgspec.json.decode(enc, type=type(value)) == value
