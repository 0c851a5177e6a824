"""The parts of a run's state that grow with the run: fan-out items and checks.

``PhaseState.item_states`` is an :class:`ItemTable` and ``RunState.checks`` a
:class:`CheckTable`, both persistent maps (:mod:`sisas.handlers.persistent`): folding a
signal into a fan-out of N items costs O(log32 N) instead of a copy of N entries, and
an item table counts its items by status as they change, so "has every item ended?"
needs no scan (:meth:`ItemTable.count`).

They read as the dicts they replace (``Mapping``: ``[i]``, ``get``, ``in``, ``len``,
``items()`` in insertion order, ``==`` with a dict) and are stored as them:
:func:`enc_hook` hands msgspec the plain dict and :func:`dec_hook` builds the table
back, so a state's JSON, its :func:`~sisas.handlers.state.state_digest` and the states
the projection stores are byte for byte what they were with dicts. Pass both hooks to
every msgspec encoder, decoder, ``to_builtins`` or ``convert`` of a state.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from typing import Literal, TypeAlias, TypeVar, overload

import msgspec

from sisas.handlers.persistent import IndexMap, PersistentMap
from sisas.signals.kinds import ErrorInfo

__all__ = ["CheckTable", "ItemState", "ItemTable", "PhaseStatus", "dec_hook", "enc_hook"]

D = TypeVar("D")

PhaseStatus: TypeAlias = Literal[
    "pending",
    "scheduled",
    "running",
    "retrying",
    "completed",
    "failed",
    "timed_out",
    "skipped",
    "cancelled",
]


class ItemState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One item of a fanned-out phase."""

    status: PhaseStatus = "pending"
    attempt: int = 0
    worker: str = ""
    output_digest: str = ""
    artifact: str = ""
    error: ErrorInfo | None = None
    duration: float = 0.0
    quarantined: str = ""
    """The artifact of a failed attempt's output (failed its exit contract or an invariant)."""


class ItemTable(Mapping[int, ItemState]):
    """The items of a fanned-out phase by index, and how many are in each status.

    Items come in order (a fan-out schedules 0, 1, 2, ...), so they are kept in an
    :class:`IndexMap`, where key order is insertion order. A key that breaks that order
    (a number below the largest that is not there yet, a negative or non-int key: only a
    hand-made or forged log has one) moves the table to a :class:`PersistentMap`, which
    keeps insertion order for any keys, as the dict before it did.
    """

    __slots__ = ("_counts", "_index", "_map")

    def __init__(self, items: Mapping[int, ItemState] | Iterable[tuple[int, ItemState]] = ()):
        self._index: IndexMap[ItemState] | None = IndexMap()
        self._map: PersistentMap[int, ItemState] | None = None
        self._counts: dict[str, int] = {}
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, item in pairs:
            self._index, self._map, self._counts, _ = self._placed(key, item)

    def _placed(
        self, key: int, item: ItemState
    ) -> tuple[
        IndexMap[ItemState] | None,
        PersistentMap[int, ItemState] | None,
        dict[str, int],
        ItemState | None,
    ]:
        """The parts of this table with ``item`` at ``key``, and the item it replaced."""
        index, mapping = self._index, self._map
        old: ItemState | None
        if index is not None:
            if type(key) is int and key >= 0:
                new, old = index.changed(key, item)
                if new is index:
                    return index, None, self._counts, old
                if old is not None or key > index.last:
                    return new, None, self._recounted(old, item), old
            mapping = PersistentMap(index.items())  # out of order from here on
        assert mapping is not None
        had = key in mapping
        new_map, old = mapping.replaced(key, item)
        if new_map is mapping:
            return None, mapping, self._counts, old
        return None, new_map, self._recounted(old if had else None, item), old

    def _recounted(self, old: ItemState | None, item: ItemState) -> dict[str, int]:
        counts = dict(self._counts)  # a handful of statuses: O(1)
        if old is not None:
            counts[old.status] -= 1
        counts[item.status] = counts.get(item.status, 0) + 1
        return counts

    def replaced(self, key: int, item: ItemState) -> tuple[ItemTable, ItemState | None]:
        """:meth:`set`, also returning the item that was at ``key`` (None: none was)."""
        index, mapping, counts, old = self._placed(key, item)
        if index is self._index and mapping is self._map:
            return self, old
        new = object.__new__(ItemTable)
        new._index, new._map, new._counts = index, mapping, counts
        return new, old

    def set(self, key: int, item: ItemState) -> ItemTable:
        """This table with ``item`` at ``key``: a new table (this one unchanged), or this
        very table when ``item`` is already there. O(log32 n)."""
        return self.replaced(key, item)[0]

    def count(self, *statuses: str) -> int:
        """How many items are in one of ``statuses``. O(1) in the number of items."""
        return sum(self._counts.get(s, 0) for s in statuses)

    def _find(self, key: object) -> ItemState | None:
        if self._index is None:
            assert self._map is not None
            found: ItemState | None = self._map.get(key)  # type: ignore[call-overload]
            return found
        if type(key) is int:
            return self._index.get(key)
        # Another type equal to an int (True, 1.0, Decimal(1)): as a dict would.
        return next((it for i, it in self._index.items() if i == key), None)

    def __getitem__(self, key: int) -> ItemState:
        item = self._find(key)
        if item is None:
            raise KeyError(key)
        return item

    @overload
    def get(self, key: int, /) -> ItemState | None: ...
    @overload
    def get(self, key: int, /, default: ItemState | D) -> ItemState | D: ...
    def get(self, key: int, /, default: object = None) -> object:
        if self._index is not None and type(key) is int:
            item = self._index.get(key)  # the common case, in as few calls as can be
        else:
            item = self._find(key)
        return default if item is None else item

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self._map or ())

    def items(self) -> ItemsView[int, ItemState]:
        return _Items(self)

    def values(self) -> ValuesView[ItemState]:
        return _Values(self)

    def as_dict(self) -> dict[int, ItemState]:
        """A new ``dict`` of the items, in the table's order."""
        if self._index is not None:
            return self._index.as_dict()
        assert self._map is not None
        return self._map.as_dict()

    def _pairs(self) -> Iterator[tuple[int, ItemState]]:
        if self._index is not None:
            return self._index.items()
        assert self._map is not None
        return iter(self._map.items())

    def __iter__(self) -> Iterator[int]:
        return (k for k, _ in self._pairs())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ItemTable) and other._index is self._index and other._map is self._map:
            return True
        if not isinstance(other, Mapping) or len(other) != len(self):
            return False
        missing = object()
        return all(other.get(k, missing) == v for k, v in self._pairs())

    __hash__ = None  # type: ignore[assignment]  # a dict is not hashable either

    def __repr__(self) -> str:
        return f"ItemTable({dict(self._pairs())!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (ItemTable, (list(self._pairs()),))


class _Items(ItemsView[int, ItemState]):
    _mapping: ItemTable

    def __iter__(self) -> Iterator[tuple[int, ItemState]]:
        return self._mapping._pairs()


class _Values(ValuesView[ItemState]):
    _mapping: ItemTable

    def __iter__(self) -> Iterator[ItemState]:
        index = self._mapping._index
        if index is not None:
            return iter(index.values())
        return (v for _, v in self._mapping._pairs())


class CheckTable(PersistentMap[str, bool]):
    """Whether each contract and invariant check passed, by its key
    (``phase[item]:boundary:contract`` or ``phase[item]:invariant``), in log order."""

    __slots__ = ()


def enc_hook(obj: object) -> object:
    """msgspec's ``enc_hook`` for states: a table as the dict it reads as."""
    if isinstance(obj, PersistentMap | ItemTable):
        return obj.as_dict()
    raise NotImplementedError(f"sisas cannot encode a {type(obj).__name__}")


def dec_hook(kind: type, obj: object) -> object:
    """msgspec's ``dec_hook`` for states: a table from the dict it was stored as,
    checked as the dict was (item numbers as text, each value its type)."""
    if kind is ItemTable:
        return ItemTable(msgspec.convert(obj, dict[int, ItemState], str_keys=True))
    if kind is CheckTable:
        return CheckTable(msgspec.convert(obj, dict[str, bool], str_keys=True))
    raise NotImplementedError(f"sisas cannot decode a {kind.__name__}")
