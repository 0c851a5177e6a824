"""Task execution: tasks run as processes by adapters, accepted, retried, behind a
circuit breaker per adapter (README.md)."""

from examples.task_execution.pipeline import pipeline

__all__ = ["pipeline"]
