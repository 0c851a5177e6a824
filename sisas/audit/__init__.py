"""Audit bundles and their readable report: evidence an auditor checks offline."""

__all__: list[str] = []
