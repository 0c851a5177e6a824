"""What a program does with a bus: start, follow and cancel runs, ask the query service,
verify and rerun runs from the log."""

__all__: list[str] = []
