"""Read side: the log folded into DuckDB tables (issue 4)."""

__all__: list[str] = []
