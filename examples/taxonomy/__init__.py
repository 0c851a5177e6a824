"""Taxonomy build: S0-S3 and finalise, with resume from S2 and quarantine (README.md)."""

from examples.taxonomy.pipeline import pipeline

__all__ = ["pipeline"]
