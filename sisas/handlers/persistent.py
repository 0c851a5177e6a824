"""Immutable maps whose versions share structure: :class:`IndexMap`, :class:`PersistentMap`.

A run's state is frozen: folding a signal makes a new state and leaves the old one as it
was (the orchestrator decides on a copy, verify keeps the state before each signal). With
a ``dict`` every new version copies every entry, so a fan-out of N items cost O(N) per
signal and O(N²) per run. Here a change copies only the path from the root to the entry
it changes: O(log32 N) time and memory, everything else shared with the version before.

:class:`IndexMap` is for keys 0, 1, 2, ...: a 32-way trie whose path to a key is the
key's digits in base 32, most significant first (Clojure's persistent vector, with
holes). Neighbouring keys share their path and their leaf, so changing the items of a
fan-out one after the other touches few nodes, and reading them in order is a walk over
whole leaves.

:class:`PersistentMap` takes any hashable keys and reads as a ``dict``: keys are equal
when ``==`` says so (``1`` and ``1.0`` are one key), iteration follows insertion order
(an entry changed in place keeps its place), equality ignores order. Its entries are
kept in an :class:`IndexMap` by the position they were inserted at, and a hash array
mapped trie (Bagwell, "Ideal Hash Trees", 2001; the maps of Clojure and of CPython's
``contextvars``) finds a key's position: each level of that trie takes the next 5 bits
of the key's 64-bit hash, a node holds only the children it has, placed by a 32-bit
bitmap, and keys with equal hashes share a collision bucket. Nothing observable depends
on the trie's shape, and the shape is deterministic too: ``str`` keys are hashed with
CRC-32, not with ``hash()``, which Python salts per process.

Entries are never removed (no state needs it), so a map only grows. Pure Python, no
clock, no randomness.
"""

from __future__ import annotations

import zlib
from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from typing import Any, Generic, Self, TypeVar, overload

import msgspec

__all__ = ["IndexMap", "PersistentMap"]

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_BITS = 5
_SLOT = (1 << _BITS) - 1
_HASH = (1 << 64) - 1
_ABSENT: Any = object()


# -- IndexMap: keys 0, 1, 2, ..., most significant digit at the root ----------------------


def _placed(node: tuple[Any, ...], i: int, child: Any) -> tuple[Any, ...]:
    """``node`` with ``child`` at ``i`` (holes up to it are None)."""
    if i < len(node):
        copy = list(node)
        copy[i] = child
        return tuple(copy)
    return (*node, *(None,) * (i - len(node)), child)


def _fill(node: tuple[Any, ...], shift: int, base: int, out: dict[int, Any]) -> None:
    """Put the entries under ``node`` into ``out``, in key order; a leaf without holes
    (every leaf of a fan-out) in one step in C."""
    if not shift:
        if None in node:
            out.update((base + i, v) for i, v in enumerate(node) if v is not None)
        else:
            out.update(zip(range(base, base + len(node)), node, strict=True))
        return
    for i, child in enumerate(node):
        if child is not None:
            _fill(child, shift - _BITS, base + (i << shift), out)


def _leaves(node: tuple[Any, ...], shift: int, out: list[Any]) -> None:
    """Put the values under ``node`` into ``out``, in key order."""
    if not shift:
        out.extend([v for v in node if v is not None] if None in node else node)
        return
    for child in node:
        if child is not None:
            _leaves(child, shift - _BITS, out)


class IndexMap(Generic[V]):
    """An immutable map from ints ``>= 0`` to values (never None), in key order.

    Made by :meth:`changed` from the empty ``IndexMap()``: O(log32 n) per change, the
    trie one level deeper each time the keys outgrow a power of 32. The caller keeps
    the keys non-negative ints; :attr:`last` is the largest so far.
    """

    __slots__ = ("_len", "_root", "_shift", "last")

    def __init__(self) -> None:
        self._root: tuple[Any, ...] = ()
        self._shift = 0
        self._len = 0
        self.last = -1
        """The largest key (-1 while empty)."""

    def get(self, key: int) -> V | None:
        """The value of ``key``, None when it has none."""
        shift = self._shift
        if key < 0 or key >> (shift + _BITS):
            return None
        node: Any = self._root
        while shift:
            i = (key >> shift) & _SLOT
            if i >= len(node) or node[i] is None:
                return None
            node = node[i]
            shift -= _BITS
        i = key & _SLOT
        if i >= len(node):
            return None
        value: V | None = node[i]
        return value

    def changed(self, key: int, value: V) -> tuple[IndexMap[V], V | None]:
        """This map with ``key`` mapped to ``value`` (this one unchanged; itself when
        ``value`` is already there), and the value ``key`` had (None: it had none)."""
        root, shift = self._root, self._shift
        while key >> (shift + _BITS):  # the old root becomes the first child of a new one
            root = (root,) if root else ()
            shift += _BITS
        path: list[tuple[tuple[Any, ...], int]] = []
        node = root
        level = shift
        while level:
            i = (key >> level) & _SLOT
            path.append((node, i))
            child = node[i] if i < len(node) else None
            node = () if child is None else child
            level -= _BITS
        i = key & _SLOT
        old: V | None = node[i] if i < len(node) else None
        if old is value:
            return self, old
        new = _placed(node, i, value)
        for parent, j in reversed(path):
            new = _placed(parent, j, new)
        m: IndexMap[V] = object.__new__(IndexMap)
        m._root, m._shift = new, shift
        m._len = self._len + (old is None)
        m.last = key if key > self.last else self.last
        return m, old

    def __len__(self) -> int:
        return self._len

    def as_dict(self) -> dict[int, V]:
        """A new ``dict`` of the entries, in key order. O(n), mostly in C."""
        out: dict[int, V] = {}
        _fill(self._root, self._shift, 0, out)
        return out

    def values(self) -> list[V]:
        """The values, in key order. O(n), mostly in C."""
        out: list[V] = []
        _leaves(self._root, self._shift, out)
        return out

    def items(self) -> Iterator[tuple[int, V]]:
        """(key, value) in key order."""
        return iter(self.as_dict().items())


# -- PersistentMap: any keys, a hash trie from key to position ------------------------------

# An entry of the hash trie is a tuple (hash, key, position): the cheapest thing to make
# and to tell from a node (``type(x) is tuple``). Nodes are msgspec Structs: made in C,
# and never tracked by the garbage collector (a trie has no cycles).
_Entry = tuple[int, Any, int]


class _Bitmap(msgspec.Struct, gc=False):
    """An inner node: ``array`` holds one child per bit set in ``bitmap``, in bit order."""

    bitmap: int
    array: tuple[Any, ...]


class _Collision(msgspec.Struct, gc=False):
    """The entries whose keys differ but whose 64-bit hashes are all ``hash``."""

    hash: int
    entries: tuple[_Entry, ...]


_EMPTY = _Bitmap(0, ())


def _hash(key: object) -> int:
    if type(key) is int:
        return hash(key) & _HASH
    if isinstance(key, str):  # CRC-32 of the text: cheap, and the same in every process
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    return hash(key) & _HASH


def _find(node: Any, h: int, key: object) -> _Entry | None:
    shift = 0
    while True:
        if type(node) is _Collision:
            if node.hash == h:
                for e in node.entries:
                    if e[1] is key or e[1] == key:
                        return e
            return None
        bitmap = node.bitmap
        bit = 1 << ((h >> shift) & _SLOT)
        if not bitmap & bit:
            return None
        node = node.array[(bitmap & (bit - 1)).bit_count()]
        if type(node) is tuple:
            if node[0] == h and (node[1] is key or node[1] == key):
                return node
            return None
        shift += _BITS


def _pair(shift: int, h1: int, c1: Any, h2: int, c2: Any) -> _Bitmap:
    """A node at ``shift`` holding ``c1`` and ``c2``, whose hashes ``h1 != h2``."""
    i1, i2 = (h1 >> shift) & _SLOT, (h2 >> shift) & _SLOT
    if i1 == i2:
        return _Bitmap(1 << i1, (_pair(shift + _BITS, h1, c1, h2, c2),))
    return _Bitmap((1 << i1) | (1 << i2), (c1, c2) if i1 < i2 else (c2, c1))


def _assoc(root: _Bitmap, new: _Entry) -> tuple[_Bitmap, _Entry | None]:
    """``root`` with the entry ``new`` added, or, when its key is there already,
    ``root`` itself and that key's entry. The path from the root down is copied, the
    rest shared."""
    h, key = new[0], new[1]
    path: list[tuple[_Bitmap, int]] = []
    node: Any = root
    shift = 0
    while True:
        if type(node) is _Collision:
            if node.hash != h:
                sub: Any = _pair(shift, node.hash, node, h, new)
                break
            for e in node.entries:
                if e[1] is key or e[1] == key:
                    return root, e
            sub = _Collision(h, (*node.entries, new))
            break
        bitmap, array = node.bitmap, node.array
        bit = 1 << ((h >> shift) & _SLOT)
        i = (bitmap & (bit - 1)).bit_count()
        if not bitmap & bit:
            sub = _Bitmap(bitmap | bit, (*array[:i], new, *array[i:]))
            break
        child = array[i]
        if type(child) is not tuple:
            path.append((node, i))
            node, shift = child, shift + _BITS
            continue
        if child[0] != h:
            slot: Any = _pair(shift + _BITS, child[0], child, h, new)
        elif child[1] is key or child[1] == key:
            return root, child
        else:
            slot = _Collision(h, (child, new))
        copy = list(array)
        copy[i] = slot
        sub = _Bitmap(bitmap, tuple(copy))
        break
    for parent, i in reversed(path):
        copy = list(parent.array)
        copy[i] = sub
        sub = _Bitmap(parent.bitmap, tuple(copy))
    return sub, None


def _trie(small: dict[Any, Any]) -> tuple[_Bitmap, IndexMap[tuple[Any, Any]]]:
    """The hash trie and the entries of ``small``, positioned in its order."""
    root, order = _EMPTY, IndexMap[tuple[Any, Any]]()
    for pos, pair in enumerate(small.items()):
        root = _assoc(root, (_hash(pair[0]), pair[0], pos))[0]
        order = order.changed(pos, pair)[0]
    return root, order


class PersistentMap(Mapping[K, V], Generic[K, V]):
    """An immutable, insertion-ordered map; :meth:`set` returns a new version.

    Reads are a ``Mapping``'s (``m[k]``, ``get``, ``in``, ``len``, iteration, ``items``,
    ``values``, ``==`` with any mapping). A subclass's versions are of its class.

    Up to :data:`SMALL` entries the map is a plain ``dict`` copied on each change: for
    so few entries a copy in C is faster than a walk down a trie in Python, and most
    runs' tables never grow past it. The map becomes a trie when it outgrows that.
    """

    SMALL = 32
    """Entries kept in a plain dict before the map becomes a trie."""

    __slots__ = ("_order", "_root")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        small = dict(items)
        self._root: dict[Any, Any] | _Bitmap = small
        self._order: IndexMap[tuple[K, V]] | None = None
        """The (key, value) pairs by position, once a trie; None while a dict."""
        if len(small) > self.SMALL:
            self._root, self._order = _trie(small)

    def _version(self, root: dict[Any, Any] | _Bitmap, order: IndexMap[Any] | None) -> Self:
        new = object.__new__(type(self))
        new._root, new._order = root, order
        return new

    def _changed(self, key: K, value: V) -> tuple[Self, bool, V | None]:
        """This map with ``key`` mapped to ``value``, whether ``key`` was in it and the
        value it had (None if none)."""
        root, order = self._root, self._order
        if isinstance(root, dict):
            was = root.get(key, _ABSENT)
            if was is value:
                return self, True, value
            if was is not _ABSENT or len(root) < self.SMALL:
                small = root.copy()
                small[key] = value
                had = was is not _ABSENT
                return self._version(small, None), had, was if had else None
            root, order = _trie(root)
        assert order is not None
        h = hash(key) & _HASH if type(key) is int else _hash(key)
        trie, found = _assoc(root, (h, key, len(order)))
        if found is None:
            return self._version(trie, order.changed(len(order), (key, value))[0]), False, None
        pair = order.get(found[2])
        assert pair is not None
        if pair[1] is value:
            return self, True, value
        return self._version(root, order.changed(found[2], (pair[0], value))[0]), True, pair[1]

    def set(self, key: K, value: V) -> Self:
        """This map with ``key`` mapped to ``value``: a new map (this one unchanged), or
        this very map when ``key`` already maps to that object. O(log32 n)."""
        return self._changed(key, value)[0]

    def replaced(self, key: K, value: V) -> tuple[Self, V | None]:
        """:meth:`set`, also returning the value ``key`` had (None when it had none; a
        map whose values may be None tells the two apart with ``in`` first)."""
        new, _, old = self._changed(key, value)
        return new, old

    def _pair(self, key: object) -> tuple[K, V] | None:
        """The (key, value) stored for ``key`` in a trie, None when it has none."""
        assert self._order is not None
        e = _find(self._root, hash(key) & _HASH if type(key) is int else _hash(key), key)
        return None if e is None else self._order.get(e[2])

    def __getitem__(self, key: K) -> V:
        root = self._root
        if type(root) is dict:
            value: V = root[key]
            return value
        pair = self._pair(key)
        if pair is None:
            raise KeyError(key)
        return pair[1]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | D) -> V | D: ...
    def get(self, key: K, /, default: object = None) -> object:
        root = self._root
        if type(root) is dict:
            return root.get(key, default)
        pair = self._pair(key)
        return default if pair is None else pair[1]

    def __contains__(self, key: object) -> bool:
        root = self._root
        if type(root) is dict:
            return key in root
        return self._pair(key) is not None

    def __len__(self) -> int:
        root = self._root
        return len(root) if type(root) is dict else len(self._order or ())

    def _pairs(self) -> Iterator[tuple[K, V]]:
        """(key, value) in insertion order."""
        root = self._root
        if type(root) is dict:
            return iter(root.items())
        assert self._order is not None
        return iter(self._order.values())

    def __iter__(self) -> Iterator[K]:
        return (k for k, _ in self._pairs())

    def as_dict(self) -> dict[K, V]:
        """A new ``dict`` with the same entries in the same order. O(n), mostly in C."""
        root = self._root
        if type(root) is dict:
            return root.copy()
        assert self._order is not None
        return dict(self._order.values())

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def __eq__(self, other: object) -> bool:
        if (
            isinstance(other, PersistentMap)
            and other._root is self._root
            and other._order is self._order
        ):
            return True
        if not isinstance(other, Mapping) or len(other) != len(self):
            return False
        missing = object()
        return all(other.get(k, missing) == v for k, v in self._pairs())

    __hash__ = None  # type: ignore[assignment]  # a dict is not hashable either

    def __repr__(self) -> str:
        body = ", ".join(f"{k!r}: {v!r}" for k, v in self._pairs())
        return f"{type(self).__name__}({{{body}}})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self._pairs()),))


class _Items(ItemsView[K, V]):
    _mapping: PersistentMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return self._mapping._pairs()


class _Values(ValuesView[V]):
    _mapping: PersistentMap[Any, V]

    def __iter__(self) -> Iterator[V]:
        return (v for _, v in self._mapping._pairs())
