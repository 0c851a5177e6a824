"""The live web dashboard (issue 6)."""

__all__: list[str] = []
