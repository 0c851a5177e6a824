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

from collections.abc import Iterable, Mapping
from typing import Literal, Self, TypeAlias

import msgspec

from sisas.handlers.persistent import PersistentMap
from sisas.signals.kinds import ErrorInfo

__all__ = ["CheckTable", "ItemState", "ItemTable", "PhaseStatus", "dec_hook", "enc_hook"]

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


class ItemTable(PersistentMap[int, ItemState]):
    """The items of a fanned-out phase by index, and how many are in each status."""

    __slots__ = ("_counts",)

    def __init__(self, items: Mapping[int, ItemState] | Iterable[tuple[int, ItemState]] = ()):
        super().__init__(items)
        counts: dict[str, int] = {}
        for item in self.values():
            counts[item.status] = counts.get(item.status, 0) + 1
        self._counts = counts

    def _changed(self, key: int, value: ItemState) -> tuple[Self, bool, ItemState | None]:
        new, had, old = super()._changed(key, value)
        if new is not self:
            counts = dict(self._counts)  # a handful of statuses: O(1)
            if had:
                assert old is not None
                counts[old.status] -= 1
            counts[value.status] = counts.get(value.status, 0) + 1
            new._counts = counts
        return new, had, old

    def count(self, *statuses: str) -> int:
        """How many items are in one of ``statuses``. O(1) in the number of items."""
        return sum(self._counts.get(s, 0) for s in statuses)


class CheckTable(PersistentMap[str, bool]):
    """Whether each contract and invariant check passed, by its key
    (``phase[item]:boundary:contract`` or ``phase[item]:invariant``), in log order."""

    __slots__ = ()


def enc_hook(obj: object) -> object:
    """msgspec's ``enc_hook`` for states: a table as the dict it reads as."""
    if isinstance(obj, PersistentMap):
        return dict(obj.items())
    raise NotImplementedError(f"sisas cannot encode a {type(obj).__name__}")


def dec_hook(kind: type, obj: object) -> object:
    """msgspec's ``dec_hook`` for states: a table from the dict it was stored as,
    checked as the dict was (item numbers as text, each value its type)."""
    if kind is ItemTable:
        return ItemTable(msgspec.convert(obj, dict[int, ItemState], str_keys=True))
    if kind is CheckTable:
        return CheckTable(msgspec.convert(obj, dict[str, bool], str_keys=True))
    raise NotImplementedError(f"sisas cannot decode a {kind.__name__}")
