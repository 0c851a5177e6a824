"""PersistentMap reads as a dict would after the same assignments, whatever the keys
(colliding hashes included), and every older version stays as it was."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sisas.handlers.persistent import PersistentMap
from sisas.handlers.tables import CheckTable, ItemState, ItemTable, dec_hook, enc_hook


class TrieMap(PersistentMap[Any, Any]):
    """Every size a trie: the structure under test even for a handful of keys."""

    __slots__ = ()
    SMALL = 0


MAPS = [PersistentMap, TrieMap]

# Keys that stress the trie: equal hashes with different keys (hash(-1) == hash(-2),
# hash(2**61 - 1) == hash(0), two words with one CRC-32), keys equal across types
# (1, 1.0, True), and many plain ints and strings.
COLLIDING = [-1, -2, 0, 2**61 - 1, 2**64, 1, 1.0, True, "plumless", "buckeroo", ""]
keys = st.one_of(
    st.sampled_from(COLLIDING),
    st.integers(min_value=-40, max_value=300),
    st.integers(),
    st.text(max_size=6),
)
values = st.integers(min_value=0, max_value=3)
assignments = st.lists(st.tuples(keys, values), max_size=250)


def same_as(m: Mapping[Any, Any], d: dict[Any, Any]) -> None:
    """``m`` reads exactly as ``d``: contents, order, lookups, equality, size."""
    assert list(m.items()) == list(d.items())
    assert list(m) == list(d)
    assert list(m.values()) == list(d.values())
    assert len(m) == len(d)
    assert m == d and d == m
    for k, v in d.items():
        assert k in m and m[k] == v and m.get(k) == v
    assert m.get(object()) is None and "absent key" not in m


@pytest.mark.parametrize("kind", MAPS)
@settings(max_examples=60, deadline=None)
@given(assignments)
def test_reads_as_a_dict_after_the_same_assignments(kind: type, pairs: list[Any]) -> None:
    m, d = kind(), {}
    for k, v in pairs:
        m = m.set(k, v)
        d[k] = v
    same_as(m, d)
    same_as(kind(pairs), dict(pairs))  # built at once, the same map


@pytest.mark.parametrize("kind", MAPS)
@settings(max_examples=40, deadline=None)
@given(assignments)
def test_every_version_keeps_what_it_held(kind: type, pairs: list[Any]) -> None:
    versions: list[tuple[Any, dict[Any, Any]]] = [(kind(), {})]
    for k, v in pairs:
        m, d = versions[-1]
        versions.append((m.set(k, v), {**d, k: v}))
    for m, d in versions:
        same_as(m, d)


@pytest.mark.parametrize("kind", MAPS)
@settings(max_examples=40, deadline=None)
@given(assignments, keys, values)
def test_replaced_gives_the_previous_value_and_an_unchanged_value_the_same_map(
    kind: type, pairs: list[Any], key: Any, value: int
) -> None:
    m = kind(pairs)
    before = dict(pairs).get(key)
    new, old = m.replaced(key, value)
    assert old == before
    assert new[key] == value and m.get(key) == before
    assert new.set(key, new[key]) is new


def test_a_map_outgrows_its_dict_into_a_trie_and_keeps_its_order() -> None:
    m: PersistentMap[int, int] = PersistentMap()
    d: dict[int, int] = {}
    for i in range(3 * PersistentMap.SMALL):
        key = (i * 7919) % 1000  # not in ascending order
        m, d[key] = m.set(key, i), i
        first = next(iter(d))  # changed, the first key keeps its place
        m, d[first] = m.set(first, -i), -i
    same_as(m, d)
    assert not isinstance(m._root, dict)


def test_equality_ignores_order_and_compares_with_any_mapping() -> None:
    a = PersistentMap([(1, "a"), (2, "b")])
    b = TrieMap([(2, "b"), (1, "a")])
    assert a == b and a == {2: "b", 1: "a"} and a != {1: "a"} and a != [(1, "a"), (2, "b")]
    assert PersistentMap() == {} and PersistentMap() != {0: None}
    with pytest.raises(TypeError):
        hash(a)
    with pytest.raises(KeyError):
        a[3]


@pytest.mark.parametrize("kind", MAPS)
def test_pickles_and_repr(kind: type[PersistentMap[Any, Any]]) -> None:
    m = kind([(i, str(i)) for i in range(40)])
    copy = pickle.loads(pickle.dumps(m))
    assert type(copy) is kind and copy == m and list(copy) == list(m)
    assert repr(kind([(1, "x")])) == f"{kind.__name__}({{1: 'x'}})"


def test_the_trie_is_the_same_in_every_process() -> None:
    """str keys are hashed with CRC-32, not Python's salted hash(): the structure, not
    only what it reads as, is the same under any PYTHONHASHSEED."""
    code = (
        "import msgspec, sys; from tests.test_persistent_map import TrieMap;"
        "m = TrieMap((f'work[{i}]:exit:int', i % 2 == 0) for i in range(500));"
        "sys.stdout.buffer.write(msgspec.json.encode(m._root))"
    )
    shapes = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(shapes) == 1


def test_trie_nodes_are_not_tracked_by_the_garbage_collector() -> None:
    m = TrieMap((i, ItemState()) for i in range(2000))
    assert not gc.is_tracked(m._root)


def _recount(table: ItemTable) -> dict[str, int]:
    counts: dict[str, int] = {}
    for it in table.values():
        counts[it.status] = counts.get(it.status, 0) + 1
    return counts


statuses = st.sampled_from(["scheduled", "running", "retrying", "completed", "failed"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=120), statuses), max_size=300))
def test_an_item_table_counts_its_items_by_status(changes: list[tuple[int, str]]) -> None:
    table = ItemTable()
    for index, status in changes:
        table = table.set(index, ItemState(status=status))  # type: ignore[arg-type]
        table, _ = table.replaced(index, table[index])  # an unchanged item counts once
    counts = _recount(table)
    for status in ("scheduled", "running", "retrying", "completed", "failed", "pending"):
        assert table.count(status) == counts.get(status, 0)
    assert table.count("completed", "failed") == counts.get("completed", 0) + counts.get(
        "failed", 0
    )
    assert ItemTable(table).count("running") == table.count("running")


# Item numbers mostly in order, as a fan-out makes them; sometimes one out of order, a
# negative one or a key of another type equal to an int, as only a forged log has them.
item_keys = st.one_of(
    st.integers(min_value=0, max_value=80),
    st.integers(min_value=0, max_value=3000),
    st.sampled_from([-1, -2, 2**40, True, 1.0, 7.0]),
)
item_values = statuses.map(lambda status: ItemState(status=status))  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(st.booleans(), st.lists(st.tuples(item_keys, item_values), max_size=200))
def test_an_item_table_reads_as_a_dict_whatever_order_its_items_come_in(
    ascending: bool, pairs: list[tuple[Any, ItemState]]
) -> None:
    if ascending:  # the common case: items scheduled 0, 1, 2, ... then changed
        pairs = [(i, v) for i, (_, v) in enumerate(pairs)] + pairs[::-1]
        pairs = [(k % 50 if isinstance(k, int) and k >= 0 else k, v) for k, v in pairs]
    versions: list[tuple[ItemTable, dict[Any, ItemState]]] = [(ItemTable(), {})]
    for k, v in pairs:
        table, d = versions[-1]
        versions.append((table.set(k, v), {**d, k: v}))
    for table, d in versions[:: max(1, len(versions) // 20)] + versions[-1:]:
        same_as(table, d)
        counts = _recount(table)
        assert all(table.count(status) == n for status, n in counts.items())
    table, d = versions[-1]
    same_as(ItemTable(d), d)
    assert pickle.loads(pickle.dumps(table)) == d
    for probe in (True, 1.0, 3, -1, "3", None):
        assert table.get(probe) == d.get(probe)  # type: ignore[arg-type]


def test_tables_are_stored_as_the_dicts_they_read_as() -> None:
    items = ItemTable((i, ItemState(status="completed", attempt=i % 3)) for i in range(100))
    checks = CheckTable((f"p[{i}]:inv", i % 2 == 0) for i in range(100))
    as_dicts = {"items": dict(items.items()), "checks": dict(checks.items())}
    as_tables = {"items": items, "checks": checks}
    assert msgspec.json.encode(as_tables, enc_hook=enc_hook) == msgspec.json.encode(as_dicts)

    class Both(msgspec.Struct):
        items: ItemTable
        checks: CheckTable

    wire = msgspec.json.encode(as_dicts)
    back = msgspec.json.decode(wire, type=Both, dec_hook=dec_hook)
    assert back.items == items and list(back.checks) == list(checks)
    assert back.items.count("completed") == 100
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"items": {"x": {}}, "checks": {}}', type=Both, dec_hook=dec_hook)
