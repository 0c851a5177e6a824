"""Where pipelines come from: code loaded by module path, file path or entry point.

A signal names a pipeline; it never names code to import. Only an operator decides
which code a worker loads (``sisas worker --pipelines ...``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from sisas.errors import UsageError
from sisas.pipeline import Pipeline

__all__ = ["ENTRY_POINT_GROUP", "load_pipelines"]

ENTRY_POINT_GROUP = "sisas.pipelines"


def _import(spec: str) -> object:
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise UsageError(f"pipeline file {spec} does not exist: check the path")
        name = f"sisas_pipelines_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"cannot load {spec} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # "importable from here", as `python -m` does
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"cannot import pipeline module {module_name!r}: {exc}; pass a module "
            "path importable from here, or a .py file"
        ) from None
    return getattr(module, attr) if attr else module


def load_pipelines(specs: Iterable[str] = (), *, entry_points: bool = True) -> dict[str, Pipeline]:
    """Pipelines from ``specs`` (``pkg.mod``, ``pkg.mod:attr`` or ``path/file.py``) and,
    if asked, from the ``sisas.pipelines`` entry point group. Every plan is validated
    here, so a broken definition fails at registration, before anything runs.
    """
    found: dict[str, Pipeline] = {}
    objects: list[tuple[str, object]] = [(s, _import(s)) for s in specs]
    if entry_points:
        objects += [
            (ep.value, ep.load()) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        ]
    for source, obj in objects:
        candidates = (
            [obj]
            if isinstance(obj, Pipeline)
            else [v for v in vars(obj).values() if isinstance(v, Pipeline)]
        )
        for pipe in candidates:
            pipe.plan()
            pipe.source = pipe.source or (
                str(Path(source).absolute()) if source.endswith(".py") else source
            )
            found[pipe.name] = pipe
    return found
