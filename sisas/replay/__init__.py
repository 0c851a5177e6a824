"""Read side: chain verification, refold, rerun and audit reports (issue 5)."""

__all__: list[str] = []
