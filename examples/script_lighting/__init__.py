"""Script lighting: scenes lit under an output contract, enrichment non-fatal (README.md)."""

from examples.script_lighting.pipeline import pipeline

__all__ = ["pipeline"]
