"""Audit bundles and their readable report: evidence an auditor checks offline."""
