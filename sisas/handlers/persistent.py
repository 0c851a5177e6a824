"""An immutable map whose versions share structure: :class:`PersistentMap`.

A run's state is frozen: folding a signal makes a new state and leaves the old one as it
was (the orchestrator decides on a copy, verify keeps the state before each signal). With
a ``dict`` every new version copies every entry, so a fan-out of N items cost O(N) per
signal and O(N²) per run. :meth:`PersistentMap.set` copies only the path from the root
to the entry it changes: O(log32 N) time and memory, everything else shared with the
version before.

The structure is a hash array mapped trie (Bagwell, "Ideal Hash Trees", 2001; the maps of
Clojure and of CPython's ``contextvars``): each level of the trie takes the next 5 bits
of the key's 64-bit hash, and a node holds only the children it has, placed by a 32-bit
bitmap. Keys with equal 64-bit hashes share a collision bucket.

What a reader sees is a ``dict``'s: keys are equal when ``==`` says so (``1`` and
``1.0`` are one key), iteration follows insertion order (an entry changed in place keeps
its place), equality ignores order. Every entry carries the position it was inserted
at and iterating sorts by it, so no observable behaviour depends on the trie's shape.
The shape itself is deterministic too: ``str`` keys are hashed with BLAKE2b, not with
``hash()``, which Python salts per process. Entries are never removed (no state needs
it), so a map only grows. Pure Python, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from typing import Any, Generic, Self, TypeVar, overload

__all__ = ["PersistentMap"]

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_BITS = 5
_SLOT = (1 << _BITS) - 1
_HASH = (1 << 64) - 1
_MISSING: Any = object()

# An entry is a tuple (hash, key, value, position): the fastest thing to make and test
# for (``type(x) is tuple``). Nodes are the two classes below.
_Entry = tuple[int, Any, Any, int]


class _Bitmap:
    """An inner node: ``array`` holds one child per bit set in ``bitmap``, in bit order."""

    __slots__ = ("array", "bitmap")

    def __init__(self, bitmap: int, array: tuple[Any, ...]) -> None:
        self.bitmap = bitmap
        self.array = array


class _Collision:
    """The entries whose keys differ but whose 64-bit hashes are all ``hash``."""

    __slots__ = ("entries", "hash")

    def __init__(self, hash: int, entries: tuple[_Entry, ...]) -> None:
        self.hash = hash
        self.entries = entries


_EMPTY = _Bitmap(0, ())


def _hash(key: object) -> int:
    if isinstance(key, str):
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
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
        bit = 1 << ((h >> shift) & _SLOT)
        if not node.bitmap & bit:
            return None
        node = node.array[(node.bitmap & (bit - 1)).bit_count()]
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


def _assoc(node: Any, shift: int, new: _Entry) -> tuple[Any, _Entry | None]:
    """``node`` with ``new`` in it, and the entry it replaced (None: it was added).

    A replaced entry's position is kept (``new``'s is for a new key); a value that is
    already there (``is``) gives back ``node`` itself.
    """
    h, key = new[0], new[1]
    if type(node) is _Collision:
        if node.hash != h:
            return _pair(shift, node.hash, node, h, new), None
        entries = node.entries
        for i, e in enumerate(entries):
            if e[1] is key or e[1] == key:
                if e[2] is new[2]:
                    return node, e
                kept = (h, e[1], new[2], e[3])
                return _Collision(h, (*entries[:i], kept, *entries[i + 1 :])), e
        return _Collision(h, (*entries, new)), None
    bitmap, array = node.bitmap, node.array
    bit = 1 << ((h >> shift) & _SLOT)
    i = (bitmap & (bit - 1)).bit_count()
    if not bitmap & bit:
        return _Bitmap(bitmap | bit, (*array[:i], new, *array[i:])), None
    child = array[i]
    old: _Entry | None = None
    sub: Any
    if type(child) is tuple:
        if child[0] == h and (child[1] is key or child[1] == key):
            if child[2] is new[2]:
                return node, child
            old, sub = child, (h, child[1], new[2], child[3])
        elif child[0] == h:
            sub = _Collision(h, (child, new))
        else:
            sub = _pair(shift + _BITS, child[0], child, h, new)
    else:
        sub, old = _assoc(child, shift + _BITS, new)
        if sub is child:
            return node, old
    return _Bitmap(bitmap, (*array[:i], sub, *array[i + 1 :])), old


def _entries(node: Any, out: list[_Entry]) -> None:
    for child in node.array if type(node) is _Bitmap else node.entries:
        if type(child) is tuple:
            out.append(child)
        else:
            _entries(child, out)


def _position(e: _Entry) -> int:
    return e[3]


class PersistentMap(Mapping[K, V], Generic[K, V]):
    """An immutable, insertion-ordered map; :meth:`set` returns a new version.

    Reads are a ``Mapping``'s (``m[k]``, ``get``, ``in``, ``len``, iteration, ``items``,
    ``values``, ``==`` with any mapping). A subclass's versions are of its class.
    """

    __slots__ = ("_len", "_next", "_ordered", "_root")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        root: Any = _EMPTY
        size = 0
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            root, old = _assoc(root, 0, (_hash(key), key, value, size))
            size += old is None
        self._root, self._len, self._next = root, size, size
        self._ordered: list[_Entry] | None = None

    def _version(self, root: Any, size: int, nxt: int) -> Self:
        new = object.__new__(type(self))
        new._root, new._len, new._next, new._ordered = root, size, nxt, None
        return new

    def replaced(self, key: K, value: V) -> tuple[Self, V | None]:
        """:meth:`set`, also returning the value ``key`` had (None when it had none; a
        map whose values may be None tells the two apart with ``in`` first)."""
        root, old = _assoc(self._root, 0, (_hash(key), key, value, self._next))
        if root is self._root:
            return self, value
        if old is None:
            return self._version(root, self._len + 1, self._next + 1), None
        return self._version(root, self._len, self._next), old[2]

    def set(self, key: K, value: V) -> Self:
        """This map with ``key`` mapped to ``value``: a new map (this one unchanged), or
        this very map when ``key`` already maps to that object. O(log32 n)."""
        return self.replaced(key, value)[0]

    def __getitem__(self, key: K) -> V:
        e = _find(self._root, _hash(key), key)
        if e is None:
            raise KeyError(key)
        value: V = e[2]
        return value

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | D) -> V | D: ...
    def get(self, key: K, /, default: object = None) -> object:
        e = _find(self._root, _hash(key), key)
        return default if e is None else e[2]

    def __contains__(self, key: object) -> bool:
        return _find(self._root, _hash(key), key) is not None

    def __len__(self) -> int:
        return self._len

    def _in_order(self) -> list[_Entry]:
        """The entries in insertion order: sorted once per version, then kept."""
        if self._ordered is None:
            out: list[_Entry] = []
            _entries(self._root, out)
            out.sort(key=_position)
            self._ordered = out
        return self._ordered

    def __iter__(self) -> Iterator[K]:
        return (e[1] for e in self._in_order())

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PersistentMap) and other._root is self._root:
            return True
        if not isinstance(other, Mapping) or len(other) != self._len:
            return False
        missing = object()
        return all(other.get(e[1], missing) == e[2] for e in self._in_order())

    __hash__ = None  # type: ignore[assignment]  # a dict is not hashable either

    def __repr__(self) -> str:
        body = ", ".join(f"{e[1]!r}: {e[2]!r}" for e in self._in_order())
        return f"{type(self).__name__}({{{body}}})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self.items()),))


class _Items(ItemsView[K, V]):
    _mapping: PersistentMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return ((e[1], e[2]) for e in self._mapping._in_order())


class _Values(ValuesView[V]):
    _mapping: PersistentMap[Any, V]

    def __iter__(self) -> Iterator[V]:
        return (e[2] for e in self._mapping._in_order())
