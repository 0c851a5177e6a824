"""Where pipelines come from: code loaded by module path, file path or entry point.

A signal names a pipeline; it never names code to import. Only an operator decides
which code a worker loads (``sisas worker --pipelines ...``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from sisas.errors import UsageError
from sisas.pipeline import Pipeline

__all__ = ["ENTRY_POINT_GROUP", "load_pipelines"]

ENTRY_POINT_GROUP = "sisas.pipelines"


def _where(exc: BaseException, path: Path) -> str:
    """`` (line N)``: the last line of ``path`` the exception went through, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f" (line {lines[-1]})" if lines and lines[-1] else ""


def _failed(what: str, exc: BaseException, path: Path | None) -> UsageError:
    """The error for code that did not import: what went wrong, where, and the fix."""
    where = _where(exc, path) if path is not None else ""
    if isinstance(exc, SyntaxError):
        return UsageError(f"{what} has a syntax error{where}: {exc.msg}; fix the file")
    if isinstance(exc, ModuleNotFoundError) and exc.name and path is not None:
        return UsageError(
            f"{what} does not import{where}: {exc}, neither installed nor in the file's "
            f"folder ({path.parent}); install the module {exc.name} in the environment "
            "sisas runs in, or fix the import"
        )
    if isinstance(exc, ImportError):
        missing = f"the module {exc.name}" if exc.name else "what it imports"
        return UsageError(
            f"{what} does not import{where}: {exc}; install {missing} in the environment "
            "sisas runs in, or fix the import"
        )
    return UsageError(
        f"{what} raised {type(exc).__name__} when imported{where}: {exc}; fix the "
        "code that runs at import"
    )


def _split(spec: str) -> tuple[str, str]:
    """``(code, attr)`` of ``pkg.mod:attr`` or ``path/file.py:attr`` (attr '' if none)."""
    code, sep, attr = spec.rpartition(":")
    if sep and code.endswith(".py"):
        return code, attr
    code, _, attr = spec.partition(":")
    return code, attr


def _import_file(spec: str) -> ModuleType:
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"pipeline file {spec} does not exist: check the path")
    name = f"sisas_pipelines_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"cannot load {spec} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    # The file imports the modules beside it, as under `python file.py`: its folder is
    # importable while it is loaded (what it imported stays in sys.modules after).
    folder = str(path.absolute().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the file's own code: anything may go wrong
        del sys.modules[name]
        raise _failed(f"pipeline file {spec}", exc, path.absolute()) from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(module_name: str) -> ModuleType:
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # "importable from here", as `python -m` does
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import pipeline module {module_name!r}: {exc}; pass a module "
                "path importable from here, or a .py file"
            ) from None
        raise _failed(f"pipeline module {module_name}", exc, None) from None
    except Exception as exc:
        raise _failed(f"pipeline module {module_name}", exc, None) from None


def _attribute(module: ModuleType, attr: str, what: str) -> object:
    """``module.attr``, or the Pipeline in ``module`` named ``attr`` (so the names that
    errors list work after the colon too). Raises UsageError listing what is there."""
    if hasattr(module, attr):
        return getattr(module, attr)
    pipes = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    named = [p for p in pipes.values() if p.name == attr]
    if len(named) == 1:
        return named[0]
    listed = ", ".join(
        k if p.name == k else f"{k} (pipeline {p.name})" for k, p in sorted(pipes.items())
    )
    there = f"its pipelines: {listed}" if listed else "it defines no Pipeline"
    raise UsageError(f"{what} has no {attr!r}: check the name ({there})")


def _import(spec: str) -> object:
    code, attr = _split(spec)
    if code.endswith(".py"):
        module, what = _import_file(code), f"pipeline file {code}"
    else:
        module, what = _import_module(code), f"pipeline module {code}"
    return _attribute(module, attr, what) if attr else module


def _source(spec: str) -> str:
    """Where another process loads the pipeline from: a file's path made absolute."""
    code, attr = _split(spec)
    if not code.endswith(".py"):
        return spec
    return str(Path(code).absolute()) + (f":{attr}" if attr else "")


def load_pipelines(specs: Iterable[str] = (), *, entry_points: bool = True) -> dict[str, Pipeline]:
    """Pipelines from ``specs`` (``pkg.mod``, ``pkg.mod:attr``, ``path/file.py`` or
    ``path/file.py:attr``; attr names the Pipeline object or the pipeline) and,
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
            else [v for v in getattr(obj, "__dict__", {}).values() if isinstance(v, Pipeline)]
        )
        if not candidates:
            raise UsageError(
                f"{source} defines no sisas Pipeline: create one (p = Pipeline('name')) "
                "and add phases to it, or name the file or module that does"
            )
        for pipe in candidates:
            pipe.plan()
            pipe.source = pipe.source or _source(source)
            found[pipe.name] = pipe
    return found
