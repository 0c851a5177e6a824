"""The environment a pipeline's code runs in, read from this interpreter.

What a run records (:class:`sisas.signals.plan.Environment`): the interpreter, the
platform, the nats-server version, and the exact version of every installed
distribution that the pipeline's code or sisas imports, with what those require in
turn. The distributions of the pipeline are found from its source, not from what
happens to be imported in this process, so a worker, ``sisas up`` and ``sisas replay
rerun`` over the same virtual environment record the same environment:

- the modules defining the pipeline's phases, invariants and contracts are parsed for
  their ``import`` statements (modules of the project itself are followed in turn);
- a top-level name that an installed distribution provides names that distribution;
- each distribution adds the ones it requires (extras left out), and sisas adds its own.

Reading metadata is I/O: the workers and replay call this, never the pure core.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import platform
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from sisas.pipeline import Pipeline
from sisas.signals.plan import Environment

__all__ = ["capture_environment", "code_modules", "pipeline_distributions"]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def capture_environment(pipeline: Pipeline, *, nats_server: str = "") -> Environment:
    """The environment ``pipeline``'s code runs in here (see the module's docstring)."""
    return Environment(
        python=platform.python_version(),
        implementation=platform.python_implementation(),
        platform=platform.platform(),
        packages=pipeline_distributions(pipeline),
        nats_server=nats_server,
    )


def pipeline_distributions(pipeline: Pipeline) -> dict[str, str]:
    """Distribution name (normalised) -> installed version, for every distribution the
    pipeline's code and sisas import, and what they require, sorted by name."""
    wanted = {"sisas"}
    for module in code_modules(pipeline):
        for name in _imported_top_levels(module):
            wanted.update(_providers().get(name, ()))
    found: dict[str, str] = {}
    todo = sorted(_normalise(n) for n in wanted)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # required only on another platform, or not installed: not used
        found[name] = dist.version
        todo.extend(_requirements(dist))
    return dict(sorted(found.items()))


def code_modules(pipeline: Pipeline) -> list[ModuleType]:
    """The modules that define the pipeline's code, then the project modules they import
    (neither the standard library, nor sisas, nor an installed distribution)."""
    objects: list[Any] = []
    for spec in pipeline.phases.values():
        objects += [spec.fn, spec.returns, *spec.params.values(), *spec.bridges.values()]
    objects += [inv.fn for inv in pipeline._pending_invariants]
    objects += [pipeline.input]
    names = {getattr(o, "__module__", None) for o in objects} - {None, "builtins"}
    seen: dict[str, ModuleType] = {}
    todo = sorted(str(n) for n in names)
    while todo:
        name = todo.pop()
        module = sys.modules.get(name)
        if name in seen or module is None or not _is_project(name):
            continue
        seen[name] = module
        todo.extend(_imported_modules(module))
    return list(seen.values())


def _is_project(module: str) -> bool:
    """A module of the user's project: neither standard library, nor sisas, nor provided
    by an installed distribution."""
    top = module.partition(".")[0]
    return top not in sys.stdlib_module_names and top != "sisas" and top not in _providers()


def _imported_modules(module: ModuleType) -> list[str]:
    """The absolute names of what ``module``'s source imports (relative ones resolved)."""
    tree = _tree(getattr(module, "__file__", None))
    if tree is None:
        return []
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
    return [n for n in names if n]


def _imported_top_levels(module: ModuleType) -> set[str]:
    return {name.partition(".")[0] for name in _imported_modules(module)}


@functools.cache
def _tree(path: str | None) -> ast.Module | None:
    if path is None or not path.endswith(".py"):
        return None
    try:
        return ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None


@functools.cache
def _providers() -> dict[str, tuple[str, ...]]:
    """Top-level import name -> the installed distributions that provide it."""
    return {k: tuple(v) for k, v in importlib.metadata.packages_distributions().items()}


def _requirements(dist: importlib.metadata.Distribution) -> Iterable[str]:
    for line in dist.requires or ():
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        match = _NAME.match(requirement)
        if match:
            yield _normalise(match.group(1))


def _normalise(name: str) -> str:
    """PEP 503: the form under which a distribution's name is compared."""
    return re.sub(r"[-_.]+", "-", name).lower()
