"""sisas: an event-sourced signal bus for auditable multi-phase pipelines.

What a program imports from here: :class:`Pipeline` and :class:`Context` to write a
pipeline, :class:`Client` (async) or :class:`SyncClient` to start and follow runs.
They are imported on first use, so ``import sisas.pipeline`` in a worker's child
process does not load the client's NATS stack.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("sisas")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from sisas.client import Client, RunHandle, RunResult, SyncClient
    from sisas.pipeline import Context, Pipeline

__all__ = [
    "Client",
    "Context",
    "Pipeline",
    "RunHandle",
    "RunResult",
    "SyncClient",
    "__version__",
]

_LAZY = {
    "Client": "sisas.client",
    "RunHandle": "sisas.client",
    "RunResult": "sisas.client",
    "SyncClient": "sisas.client",
    "Context": "sisas.pipeline",
    "Pipeline": "sisas.pipeline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sisas' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
