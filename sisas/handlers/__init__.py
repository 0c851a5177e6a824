"""Pure decisions: ``decide(state, input) -> signals`` and ``evolve(state, signal) -> state``.

Filled by the orchestration work (issue 3); nothing here does I/O or reads the clock.
"""

__all__: list[str] = []
