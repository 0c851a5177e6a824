"""The committed JSON Schemas match the Structs, and real signals validate against them."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import msgspec
from hypothesis import given, settings

from sisas.schemas import COMMITTED_DIR, export, normalise_descriptions, render, schemas
from sisas.signals import KINDS, Signal, encode_signal
from sisas.signals import kinds as signal_kinds
from sisas.signals.records import encode_commit
from tests.runs import validator
from tests.strategies import signals


def test_committed_schemas_are_exactly_what_the_structs_generate() -> None:
    generated = schemas()
    committed = {p.name: p.read_text() for p in COMMITTED_DIR.glob("*.json")}
    assert set(committed) == set(generated), "run `sisas schema export sisas/schemas/json`"
    for name, schema in generated.items():
        assert committed[name] == render(schema), (
            f"{name} drifted from the Structs: if the change is intended, run "
            "`sisas schema export sisas/schemas/json` and commit the diff"
        )


def _docstring_shapes(node: object, shape: str) -> object:
    """``node`` with every description written as msgspec ``shape`` writes a docstring:
    0.22 kept the source's indentation (``__doc__`` as is), 0.23 dedents it."""
    if isinstance(node, dict):
        out = {k: _docstring_shapes(v, shape) for k, v in node.items()}
        if isinstance(node.get("title"), str) and "description" in node:
            struct = STRUCTS.get(node["title"])
            if struct is not None and struct.__doc__:
                raw = struct.__doc__.strip()
                out["description"] = raw if shape == "0.22" else inspect.cleandoc(raw)
        return out
    if isinstance(node, list):
        return [_docstring_shapes(v, shape) for v in node]
    return node


STRUCTS = {
    cls.__name__: cls
    for cls in (Signal, *KINDS.values(), *(t for t in vars(signal_kinds).values()))
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct)
}


def test_schemas_do_not_depend_on_how_msgspec_formats_a_docstring() -> None:
    """msgspec 0.22 and 0.23 put a Struct's docstring into ``description`` indented and
    dedented; sisas cleans it itself, so the committed files are the same under both."""
    raw = msgspec.json.schema(Signal)
    indented = _docstring_shapes(raw, "0.22")
    dedented = _docstring_shapes(raw, "0.23")
    multi_line = [d for d in json.dumps(indented).split('"description": ')[1:] if "\\n    " in d]
    assert multi_line, "no indented docstring was produced: the test would prove nothing"
    assert indented != dedented
    assert normalise_descriptions(indented) == normalise_descriptions(dedented)
    assert normalise_descriptions(raw) == normalise_descriptions(dedented)


def test_there_is_one_schema_per_kind_plus_the_union_and_the_commit() -> None:
    assert set(schemas()) == {f"{k}.json" for k in KINDS} | {"signal.json", "commit.json"}


@settings(max_examples=50, deadline=None)
@given(signals(n=4))
def test_every_commit_on_the_wire_validates_against_the_commit_schema(sigs: list) -> None:
    commit = json.loads(encode_commit(sigs))
    validator("commit").validate(commit)
    bad = {**commit, "commit": 1}
    assert not validator("commit").is_valid(bad)
    assert not validator("commit").is_valid({**commit, "signals": []})


@settings(max_examples=150, deadline=None)  # validating is slow on a loaded machine
@given(signals(n=1))
def test_every_signal_on_the_wire_validates_against_its_kind_and_the_union(sigs: list) -> None:
    wire = json.loads(encode_signal(sigs[0]))
    validator(sigs[0].kind).validate(wire)
    validator("signal").validate(wire)


def test_schemas_reject_what_sisas_rejects() -> None:
    v = validator("phase_completed")
    good = {
        "id": "r:1",
        "run_id": "r",
        "pipeline": "p",
        "seq": 1,
        "at": "2026-01-01T00:00:00Z",
        "prev": "0" * 64,
        "hash": "a" * 64,
        "body": {"kind": "phase_completed", "output_digest": "sha256:" + "b" * 64},
    }
    v.validate(good)
    for bad in (
        {**good, "seq": 0},
        {**good, "surprise": 1},
        {**good, "body": {"kind": "phase_failed", "error": {"kind": "X", "message": "m"}}},
        {**good, "body": {"kind": "phase_completed", "output_digest": "md5:abc"}},
        {**good, "at": "yesterday"},
    ):
        assert not v.is_valid(bad), bad


def test_export_writes_the_committed_files(tmp_path: Path) -> None:
    paths = export(tmp_path / "out")
    for path in paths:
        assert path.read_text() == (COMMITTED_DIR / path.name).read_text()


def test_signal_envelope_schema_names_every_field() -> None:
    props = schemas()["signal.json"]["$defs"]["Signal"]["properties"]
    assert set(props) == {f.encode_name for f in msgspec.structs.fields(Signal)}


def test_the_signal_catalog_in_docs_is_generated_from_the_code() -> None:
    from sisas.schemas import catalog_markdown

    page = Path(__file__).parent.parent / "docs" / "signals.md"
    assert page.read_text() == catalog_markdown(), (
        "docs/signals.md drifted: regenerate it with "
        'python -c "from sisas.schemas import catalog_markdown as c; '
        "open('docs/signals.md','w').write(c())\""
    )
