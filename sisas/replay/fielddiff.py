"""Field-level differences between two JSON-like values."""

from __future__ import annotations

from typing import Any

from sisas.replay.verdicts import FieldDiff

__all__ = ["field_diff"]


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def field_diff(recorded: Any, new: Any, *, path: str = "", limit: int = 50) -> list[FieldDiff]:
    """The leaves where ``recorded`` and ``new`` differ, in document order, at most ``limit``.

    Dicts are compared key by key (a missing key shows as None), lists item by item (a
    length difference shows at ``path.length``); anything else by equality, with ``1``
    and ``1.0`` and ``True`` told apart.
    """
    out: list[FieldDiff] = []
    _walk(recorded, new, path, out, limit)
    return out


def _walk(a: Any, b: Any, path: str, out: list[FieldDiff], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            _walk(a.get(key), b.get(key), _join(path, key), out, limit)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(min(len(a), len(b))):
            _walk(a[i], b[i], _join(path, i), out, limit)
        if len(a) != len(b) and len(out) < limit:
            out.append(FieldDiff(path=_join(path, "length"), recorded=len(a), new=len(b)))
        return
    if type(a) is not type(b) or a != b:
        out.append(FieldDiff(path=path or "(value)", recorded=a, new=b))
