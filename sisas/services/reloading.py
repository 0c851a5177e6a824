"""Picking up changed pipeline code in a running worker (``--reload``).

The files watched are those of the modules that define a pipeline's phases, invariants
and contracts, and of the project modules they import (:func:`sisas.environment.
code_modules`). When one changes, the pipelines are loaded again from their sources;
code that no longer loads (a syntax error being typed) is reported and the previous code
kept. The worker then runs the new code for every attempt it starts, registers the new
plans (fingerprint and environment: the runs that follow record them), and answers
presence with the new fingerprints, so ``sisas run FILE`` compares against what runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sisas.environment import code_modules
from sisas.loader import load_pipelines
from sisas.pipeline import Pipeline

__all__ = ["CodeWatcher"]


class CodeWatcher:
    """The modification times of the files ``pipelines`` are made of."""

    def __init__(self, pipelines: dict[str, Pipeline]) -> None:
        self.pipelines = dict(pipelines)
        self._seen = self._stat()

    def _files(self) -> set[Path]:
        found = set()
        for pipe in self.pipelines.values():
            for module in code_modules(pipe):
                path = getattr(module, "__file__", None)
                if path:
                    found.add(Path(path))
        return found

    def _stat(self) -> dict[Path, float]:
        out = {}
        for path in self._files():
            try:
                out[path] = path.stat().st_mtime
            except OSError:
                out[path] = -1.0  # deleted or unreadable: a change too
        return out

    def changed(self) -> list[Path]:
        """The watched files changed since the last load."""
        now = self._stat()
        return sorted(p for p in now.keys() | self._seen.keys() if now.get(p) != self._seen.get(p))

    def reload(self) -> dict[str, Pipeline]:
        """Load the pipelines again from their sources: the new ones by name. Raises
        :class:`~sisas.errors.UsageError` (the previous code stays) when they no longer
        load; the files are watched from now on either way."""
        modules = {m.__name__ for pipe in self.pipelines.values() for m in code_modules(pipe)}
        saved = {name: sys.modules[name] for name in modules if name in sys.modules}
        for name in modules:
            sys.modules.pop(name, None)  # import them afresh, not from the module cache
        sources = sorted({p.source for p in self.pipelines.values() if p.source})
        try:
            fresh = load_pipelines(sources, entry_points=False)
        except BaseException:
            sys.modules.update(saved)
            self._seen = self._stat()
            raise
        self.pipelines.update({n: p for n, p in fresh.items() if n in self.pipelines})
        self._seen = self._stat()
        return fresh
