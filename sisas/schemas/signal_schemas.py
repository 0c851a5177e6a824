"""JSON Schema of every signal kind, generated from the Structs.

One file per kind (``phase_completed.json``: the envelope with that body), plus
``signal.json`` (any kind) and ``commit.json`` (a log message of format 2: the signals
of one decision). The generated files are committed under
``sisas/schemas/json/``; a test fails when they drift from the Structs, so a change to
the wire format is always a visible diff.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path
from typing import Any, Final

import msgspec

from sisas.signals.envelope import Signal
from sisas.signals.kinds import KINDS
from sisas.signals.records import COMMIT_FORMAT

__all__ = ["COMMITTED_DIR", "export", "normalise_descriptions", "render", "schemas"]

COMMITTED_DIR: Final = Path(__file__).parent / "json"
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def _reachable(defs: dict[str, Any], root: str) -> dict[str, Any]:
    keep: dict[str, Any] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = defs[name]
        text = json.dumps(defs[name])
        todo.extend(n for n in defs if f'"#/$defs/{n}"' in text)
    return dict(sorted(keep.items()))


def normalise_descriptions(node: Any) -> Any:
    """``node`` with every ``description`` cleaned as :func:`inspect.cleandoc` does.

    msgspec copies a Struct's docstring into ``description``: 0.22 keeps the source's
    indentation, 0.23 dedents it. Cleaning it here makes the exported files depend on
    the docstrings alone, never on the msgspec release that read them.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else normalise_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [normalise_descriptions(value) for value in node]
    return node


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for ``signal.json`` and one per kind."""
    base = normalise_descriptions(msgspec.json.schema(Signal))
    defs: dict[str, Any] = base["$defs"]
    # On the wire every signal is sealed: its hash is required, even though the Struct
    # has a default (the unsealed form that is hashed).
    defs["Signal"]["required"] = sorted({*defs["Signal"]["required"], "hash"})
    defs["Signal"]["properties"]["hash"] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    out: dict[str, dict[str, Any]] = {
        "signal.json": {
            "$schema": _DIALECT,
            "$id": "urn:sisas:signal",
            "title": "sisas signal (any kind)",
            "$ref": "#/$defs/Signal",
            "$defs": dict(sorted(defs.items())),
        }
    }
    for kind, body_type in KINDS.items():
        kind_defs = copy.deepcopy(defs)
        envelope = kind_defs["Signal"]
        envelope["properties"]["body"] = {"$ref": f"#/$defs/{body_type.__name__}"}
        envelope["title"] = f"Signal[{kind}]"
        out[f"{kind}.json"] = {
            "$schema": _DIALECT,
            "$id": f"urn:sisas:signal:{kind}",
            "title": f"sisas signal: {kind}",
            "$ref": "#/$defs/Signal",
            "$defs": _reachable(kind_defs, "Signal"),
        }
    out["commit.json"] = {
        "$schema": _DIALECT,
        "$id": "urn:sisas:commit",
        "title": "sisas commit: the signals of one decision, one log message",
        "description": (
            "Stored on sisas.run.<pipeline>.<run>.c, in canonical bytes: "
            '{"commit":2,"signals":[...]} with each signal in its own canonical bytes. '
            "Valid only whole: every signal of the subject's run, each chained to the one "
            "before it (seq + 1, prev = its hash)."
        ),
        "type": "object",
        "properties": {
            "commit": {"const": COMMIT_FORMAT, "description": "the log format"},
            "signals": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Signal"}},
        },
        "required": ["commit", "signals"],
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }
    return out


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: stable key order, two-space indent."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` (created if needed); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written
