"""The signal layer: canonical codec, hash chain, deterministic ids, semantic digests."""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec
import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sisas.errors import InvalidName, MalformedSignal, SignalError, TamperedSignal
from sisas.signals import (
    GENESIS,
    ChainHead,
    CorruptMessage,
    Draft,
    InvariantChecked,
    PhaseCompleted,
    PhaseScheduled,
    RunRequested,
    StoredSignal,
    decode_record,
    decode_signal,
    encode_signal,
    semantic_digest,
    signal_id,
    verify_chain,
)
from tests.conftest import AT
from tests.strategies import signals


@given(signals(n=1))
def test_every_kind_roundtrips_through_its_wire_bytes(sigs: list) -> None:
    (sig,) = sigs
    assert decode_signal(encode_signal(sig)) == sig


@settings(max_examples=200)
@given(signals(n=1), st.data())
def test_changing_any_byte_of_a_signal_breaks_verification(sigs: list, data: st.DataObject) -> None:
    raw = bytearray(encode_signal(sigs[0]))
    i = data.draw(st.integers(0, len(raw) - 1), label="index")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]), label="byte")
    raw[i] = new
    with pytest.raises(SignalError):
        decode_signal(bytes(raw))


@given(signals(n=4))
def test_a_sealed_run_verifies_and_links_each_signal_to_the_previous(sigs: list) -> None:
    assert verify_chain(sigs) == []
    assert sigs[0].prev == GENESIS
    assert [s.prev for s in sigs[1:]] == [s.hash for s in sigs[:-1]]
    assert [s.id for s in sigs] == [signal_id(sigs[0].run_id, i) for i in range(1, 5)]


@given(signals(n=4))
def test_reordering_dropping_or_duplicating_signals_is_reported(sigs: list) -> None:
    assert {i.problem for i in verify_chain([sigs[0], sigs[2], sigs[3]])} == {"gap"}
    assert {i.problem for i in verify_chain([sigs[0], sigs[1], sigs[1], sigs[2]])} == {"duplicate"}
    assert verify_chain([sigs[1], sigs[0]])[0].problem in {"gap", "duplicate"}


def test_a_body_swapped_between_signals_is_tampering() -> None:
    head = ChainHead(pipeline="p", run_id="r1")
    (a, b), _ = head.extend(
        [Draft(body=RunRequested(seed=1), at=AT), Draft(body=RunRequested(seed=2), at=AT)]
    )
    forged = msgspec.structs.replace(a, body=b.body)
    with pytest.raises(TamperedSignal):
        decode_signal(encode_signal(forged))


def test_the_same_decision_seals_to_the_same_bytes() -> None:
    drafts = [
        Draft(body=RunRequested(seed=7, config={"x": 1}), at=AT),
        Draft(body=PhaseCompleted(output_digest=semantic_digest([1, 2])), phase="a", at=AT),
    ]
    one, _ = ChainHead(pipeline="p", run_id="r1").extend(drafts)
    two, _ = ChainHead(pipeline="p", run_id="r1").extend(drafts)
    assert [encode_signal(s) for s in one] == [encode_signal(s) for s in two]


def test_nan_cannot_be_sealed_because_json_would_silently_change_it() -> None:
    draft = Draft(
        body=InvariantChecked(invariant="INV-1", passed=False, observed=float("nan")), at=AT
    )
    with pytest.raises(MalformedSignal, match="NaN"):
        ChainHead(pipeline="p", run_id="r1").extend([draft])


@pytest.mark.parametrize("name", ["", "a.b", "a b", "a*", ">", "x" * 65, "-lead"])
def test_names_that_cannot_be_subject_tokens_are_refused(name: str) -> None:
    with pytest.raises(InvalidName, match="letters, digits"):
        ChainHead(pipeline="p", run_id=name).extend([Draft(body=RunRequested(), at=AT)])


def test_non_canonical_json_is_refused_even_when_it_means_the_same() -> None:
    (sig,), _ = ChainHead(pipeline="p", run_id="r1").extend([Draft(body=RunRequested(), at=AT)])
    spaced = msgspec.json.format(encode_signal(sig), indent=1)
    with pytest.raises(MalformedSignal, match="canonical"):
        decode_signal(spaced)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\xff garbage", "not JSON"),
        (b'{"id": 1}', "not a valid signal"),
        (b"[]", "not a valid signal"),
        (b'{"kind":"run_requested"}', "not a valid signal"),
    ],
)
def test_bad_messages_become_records_with_their_sequence_and_reason(
    data: bytes, reason: str
) -> None:
    rec = decode_record(42, "sisas.run.p.r1._.x", data)
    assert isinstance(rec, CorruptMessage)
    assert rec.stream_seq == 42
    assert reason in rec.reason


def test_a_valid_signal_on_the_wrong_subject_is_reported() -> None:
    (sig,), _ = ChainHead(pipeline="p", run_id="r1").extend([Draft(body=RunRequested(), at=AT)])
    good = decode_record(1, "sisas.run.p.r1._.run_requested", encode_signal(sig))
    assert isinstance(good, StoredSignal)
    moved = decode_record(1, "sisas.run.p.r2._.run_requested", encode_signal(sig))
    assert isinstance(moved, CorruptMessage)
    assert "stored on" in moved.reason


# -- semantic digests ------------------------------------------------------------------

nested = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


def _shuffled(value: object, rnd: random.Random) -> object:
    if isinstance(value, dict):
        items = [(k, _shuffled(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@given(nested, st.randoms())
def test_key_order_never_changes_a_digest(value: object, rnd: random.Random) -> None:
    assert semantic_digest(_shuffled(value, rnd)) == semantic_digest(value)


def test_digest_distinguishes_types_and_structure() -> None:
    values = [1, 1.0, "1", [1], {"1": 1}, True, None, b"1", [[1]], [1, 1], (1,) * 2 + (0,)]
    digests = {semantic_digest(v) for v in values}
    assert len(digests) == len(values) - 0


class Model(pydantic.BaseModel):
    weights: list[float]
    label: str


class Record(msgspec.Struct):
    weights: list[float]
    label: str


@dataclass
class Plain:
    weights: list[float]
    label: str


def test_models_structs_and_dataclasses_digest_by_content() -> None:
    m1 = Model(weights=[0.5, 0.5], label="a")
    assert semantic_digest(m1) == semantic_digest(Model(label="a", weights=[0.5, 0.5]))
    assert semantic_digest(m1) != semantic_digest(Model(weights=[0.5, 0.25], label="a"))
    assert semantic_digest(Record([0.5], "a")) == semantic_digest(Record(label="a", weights=[0.5]))
    assert semantic_digest(Plain([0.5], "a")) != semantic_digest(Plain([0.5], "b"))


def test_numpy_arrays_digest_by_dtype_shape_and_bytes() -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert semantic_digest(a) == semantic_digest(a.copy(order="F"))
    assert semantic_digest(a) == semantic_digest(a.astype(">f8"))  # byte order is not content
    assert semantic_digest(a) != semantic_digest(a.astype(np.float32))
    assert semantic_digest(a) != semantic_digest(a.reshape(4, 3))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], 100)
    assert semantic_digest(a) != semantic_digest(b)
    assert semantic_digest(np.float64(0.5)) == semantic_digest(0.5)
    assert semantic_digest({"x": np.nan}) == semantic_digest({"x": float("nan")})


def test_digest_refuses_types_it_cannot_digest_faithfully() -> None:
    with pytest.raises(TypeError, match="cannot digest"):
        semantic_digest(object())


def independent_verify(wire: bytes) -> bool:
    """The language-independent recipe of docs/concepts.md: no JSON re-encoding needed."""
    import hashlib
    import re

    matches = list(re.finditer(rb'"hash":"([0-9a-f]{64})",', wire))
    if not matches:
        return False
    last = matches[-1]
    hashed = wire[: last.start()] + wire[last.end() :]
    return hashlib.sha256(hashed).hexdigest().encode() == last.group(1)


@given(signals(n=1))
def test_a_client_in_any_language_can_verify_a_hash_without_re_encoding(sigs: list) -> None:
    assert independent_verify(encode_signal(sigs[0]))


def test_the_recipe_survives_floats_and_nested_hash_keys() -> None:
    body = RunRequested(config={"hash": "x", "tiny": 1e-05, "big": 1e16, "neg": -0.0})
    (sig,), _ = ChainHead(pipeline="p", run_id="r1").extend([Draft(body=body, at=AT)])
    wire = encode_signal(sig)
    assert b'"tiny":0.00001' in wire
    assert b'"big":1e16' in wire
    assert independent_verify(wire)
    assert not independent_verify(wire.replace(b"0.00001", b"0.00002"))


@given(signals(n=3))
def test_a_sealed_signal_is_sent_as_the_bytes_its_canonical_encoding_gives(sigs: list) -> None:
    """Sealing keeps the signal's wire bytes (the hash put into the bytes it hashed):
    they are exactly what encoding it anew gives, whatever its body holds."""
    for sig in sigs:
        assert encode_signal(sig) == msgspec.json.Encoder(order="sorted").encode(sig)


def test_a_body_holding_the_text_of_an_id_member_is_sealed_to_canonical_bytes() -> None:
    body = PhaseScheduled(inputs={"id": 'sha256:x","id":"', ',"id":"': "y"}, seed=1)
    [sig] = ChainHead(pipeline="pipe", run_id="r1").extend([Draft(body=body, at=AT)])[0]
    wire = encode_signal(sig)
    assert wire == msgspec.json.Encoder(order="sorted").encode(sig)
    assert decode_signal(wire) == sig
