"""Schemas at the edges: JSON Schema of every signal kind (and, later, phase contracts)."""

from sisas.schemas.catalog import catalog_markdown
from sisas.schemas.signal_schemas import (
    COMMITTED_DIR,
    export,
    normalise_descriptions,
    render,
    schemas,
)

__all__ = [
    "COMMITTED_DIR",
    "catalog_markdown",
    "export",
    "normalise_descriptions",
    "render",
    "schemas",
]
