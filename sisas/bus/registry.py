"""Where pipelines come from: code loaded by module path, file path or entry point, and
their plans published in the ``sisas-pipelines`` KV bucket for orchestrators to read.

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

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from sisas.errors import BusError, UsageError
from sisas.pipeline import Pipeline
from sisas.signals.plan import PipelinePlan

__all__ = ["PIPELINE_BUCKET", "PlanRegistry", "load_pipelines"]

PIPELINE_BUCKET = "sisas-pipelines"
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


class PlanRegistry:
    """Plans by pipeline name, in a JetStream KV bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def _kv(self) -> KeyValue:
        try:
            return await self._js.key_value(PIPELINE_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            return await self._js.create_key_value(bucket=PIPELINE_BUCKET, history=5)

    async def publish(self, plan: PipelinePlan) -> None:
        try:
            kv = await self._kv()
            await kv.put(plan.name, msgspec.json.encode(plan))
        except Exception as exc:  # NATS errors never leave bus/
            raise BusError(
                f"could not register pipeline {plan.name}: {exc}; is JetStream "
                "reachable and the sisas-pipelines bucket writable?"
            ) from None

    async def get(self, name: str) -> PipelinePlan | None:
        kv = await self._kv()
        try:
            entry = await kv.get(name)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=PipelinePlan)

    async def names(self) -> list[str]:
        kv = await self._kv()
        try:
            return sorted(await kv.keys())
        except NotFoundError:
            return []
