"""What a pipeline author imports: ``Pipeline``, ``Context`` and the phase errors.

```python
from pydantic import BaseModel
from sisas.pipeline import Context, Pipeline

class Points(BaseModel):
    xs: list[float]

pipe = Pipeline("clustering", version="1.0", input=Points)

@pipe.phase()
def load(ctx: Context, input: Points) -> Points: ...

@pipe.phase(retries=2, timeout=30)
def clean(ctx: Context, load: Points) -> Points: ...     # depends on `load` by name

@pipe.invariant("INV-7.1", phase="clean", description="no negative values")
def non_negative(out: Points) -> bool:
    return min(out.xs, default=0) >= 0
```

A phase's parameters after ``ctx`` name what it receives: ``input`` (the run input, for
a phase with no dependencies), the name of an upstream phase (its output), or ``item``
(one element of the upstream output named by ``map_over``). Annotations are the
phase's entry contracts, the return annotation its exit contract; both are checked by
pydantic and every check is recorded as a signal.

numpy arrays and tables (pandas DataFrames, pyarrow Tables) are outputs too, stored in
typed binary forms; :class:`Array` and :class:`Table` state their contracts::

    Vectors = Annotated[np.ndarray, Array(dtype="float64", shape=(None, 3))]

    @pipe.phase()
    def embed(ctx: Context, clean: Points) -> Vectors: ...
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    TypeVar,
)

import numpy as np

# Array and Table are an author's; the rest is re-exported for the handlers (the worker's
# side reads annotations through this module: docs/architecture.md).
from sisas.contracts import Array as Array
from sisas.contracts import BinaryForm as BinaryForm
from sisas.contracts import BinaryKind as BinaryKind
from sisas.contracts import Table as Table
from sisas.contracts import (
    annotations_of,
    binary_name,
    check_output,
    check_parameter,
)
from sisas.contracts import binary_form as binary_form
from sisas.contracts import shape_text as shape_text
from sisas.contracts import without_none as without_none
from sisas.errors import (
    Cancelled,
    ContractViolation,
    HardFailure,
    InvalidPipeline,
    InvariantViolation,
    NonFatal,
    PhaseError,
    PhaseNotImplemented,
    ResourceExhausted,
    Timeout,
    WorkerLost,
)
from sisas.handlers.attempt_log import AttemptLog, PhaseLogger
from sisas.signals.digest import semantic_digest
from sisas.signals.kinds import Scalar
from sisas.signals.names import check_name
from sisas.signals.plan import PhasePlan, PipelinePlan

__all__ = [
    "Array",
    "Cancelled",
    "Context",
    "ContractViolation",
    "HardFailure",
    "InvariantSpec",
    "InvariantViolation",
    "NonFatal",
    "PhaseError",
    "PhaseNotImplemented",
    "PhaseSpec",
    "Pipeline",
    "ResourceExhausted",
    "Table",
    "Timeout",
    "WorkerLost",
    "parse_memory",
]

F = TypeVar("F", bound=Callable[..., Any])
_RESERVED = {"input", "item"}


def parse_memory(value: int | str | None) -> int | None:
    """``512MB``, ``2GiB``, ``1000000`` -> bytes; None stays None."""
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", value.lower())
    if not m:
        raise InvalidPipeline(f"memory_limit {value!r} is not a size such as '512MB' or '2GiB'")
    unit = (m.group(2) or "b").rstrip("b").rstrip("i")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    return int(float(m.group(1)) * scale)


class Context:
    """What a running phase gets: identity, seed, a numpy Generator, progress, a logger.

    ``seed`` is derived from the run seed and the phase name (and item), so a phase
    draws the same numbers in every replay; use ``ctx.rng``, never an unseeded generator.
    """

    def __init__(
        self,
        *,
        run_id: str,
        pipeline: str,
        phase: str,
        seed: int,
        attempt: int = 0,
        item: int | None = None,
        config: Mapping[str, Scalar] | None = None,
        progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
        secrets: Mapping[str, str] | None = None,
        log: AttemptLog | None = None,
    ) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.phase = phase
        self.seed = seed
        self.attempt = attempt
        self.item = item
        self.config: Mapping[str, Scalar] = dict(config or {})
        self._attempt_log = log
        self._progress = progress
        self._cancel = cancel
        self._secrets = dict(secrets or {})

    # The generator and the logger are made when a phase first asks for them: most
    # phases use neither, and a seeded Generator costs more than a no-op phase.
    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """A numpy Generator seeded with :attr:`seed`: the same draws in every replay."""
        return np.random.default_rng(self.seed)

    @functools.cached_property
    def log(self) -> PhaseLogger:
        """A logger: INFO and above is kept with the attempt (``sisas logs RUN``)."""
        return PhaseLogger(
            logging.getLogger(f"sisas.phase.{self.pipeline}.{self.phase}"),
            {"run_id": self.run_id, "phase": self.phase, "attempt": self.attempt},
            self._attempt_log,
        )

    def secret(self, name: str) -> str:
        """The value of a secret the phase declared (``@pipeline.phase(secrets=[...])``),
        as the worker running it resolved it. Never return it, log it or put it in an
        output: those are recorded for ever."""
        if name not in self._secrets:
            raise HardFailure(
                f"phase {self.phase} reads secret {name!r} without declaring it: add it to "
                f"@pipeline.phase(secrets=[...])"
            )
        return self._secrets[name]

    @property
    def cancelled(self) -> bool:
        """True once the run is cancelled while this attempt runs. A long phase checks
        it between steps and returns (or calls :meth:`check_cancelled`): the worker has
        stopped waiting for it and its outcome is not recorded. A phase in a child
        process (``timeout=``, ``memory_limit=``) is killed instead."""
        return self._cancel is not None and self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` when :attr:`cancelled` is true."""
        if self.cancelled:
            raise Cancelled(f"run {self.run_id} was cancelled")

    def progress(self, done: float, total: float = 1.0, message: str = "") -> None:
        """Report progress (``done`` of ``total``); shown live, never part of the log."""
        if self._progress is not None and total > 0:
            self._progress(max(0.0, min(1.0, done / total)), message)


@dataclass
class InvariantSpec:
    """A named predicate over a phase's output."""

    id: str
    phase: str
    description: str
    fn: Callable[[Any], object]


@dataclass
class PhaseSpec:
    """A phase: its function, contracts and policies."""

    name: str
    fn: Callable[..., Any]
    depends_on: list[str]
    params: dict[str, Any]
    returns: Any
    retries: int = 0
    backoff: float = 0.5
    backoff_factor: float = 2.0
    backoff_max: float = 30.0
    timeout: float | None = None
    memory_limit: int | None = None
    enabled: bool = True
    fatal: bool = True
    side_effects: bool = False
    map_over: str = ""
    partial: bool = False
    secrets: list[str] = field(default_factory=list)
    invariants: list[InvariantSpec] = field(default_factory=list)
    bridges: dict[str, Any] = field(default_factory=dict)

    @property
    def isolated(self) -> bool:
        """Run in a child process: needed to enforce a timeout or memory limit."""
        return self.timeout is not None or self.memory_limit is not None


def _type_name(t: Any) -> str:
    """A contract's name: a type's name, with what an array or a table contract asks
    (``ndarray[float64, (None, 3)]``, ``DataFrame[sku: string]``)."""
    return binary_name(t) or getattr(t, "__name__", None) or repr(t)


class Pipeline:
    """A named, versioned set of phases forming a DAG. Validated when first planned."""

    def __init__(
        self,
        name: str,
        *,
        version: str = "0",
        input: Any = None,
        description: str = "",
        circuit_threshold: int = 5,
        circuit_cooldown: float = 60.0,
        default_input: str | Path | None = None,
        max_concurrent_runs: int | None = None,
    ) -> None:
        self.name = check_name(name, "pipeline name")
        if max_concurrent_runs is not None and max_concurrent_runs < 1:
            raise InvalidPipeline(
                f"max_concurrent_runs={max_concurrent_runs} would start nothing: give 1 or more"
            )
        self.max_concurrent_runs = max_concurrent_runs
        """At most this many runs at once (the others wait): set by `sisas up` when it
        loads the pipeline, as `sisas limits set NAME N` would."""
        self.default_input = None if default_input is None else Path(default_input)
        """A JSON file `sisas run` sends as the input when given none (recorded like any)."""
        self.version = version
        self.input = input
        self.description = description
        self.circuit_threshold = circuit_threshold
        self.circuit_cooldown = circuit_cooldown
        self.phases: dict[str, PhaseSpec] = {}
        self.source = ""
        """Where a loader found it (module path or file): child processes import it from there."""
        self.schedules: list[dict[str, Any]] = []
        """Schedules declared with :meth:`schedule` (``sisas up`` runs them)."""
        self._pending_invariants: list[InvariantSpec] = []
        self._pending_bridges: list[tuple[str, str, Any]] = []
        self._plan: PipelinePlan | None = None

    def phase(
        self,
        name: str | None = None,
        *,
        depends_on: list[str] | None = None,
        retries: int = 0,
        backoff: float = 0.5,
        backoff_factor: float = 2.0,
        backoff_max: float = 30.0,
        timeout: float | None = None,
        memory_limit: int | str | None = None,
        enabled: bool = True,
        fatal: bool = True,
        side_effects: bool = False,
        map_over: str = "",
        partial: bool = False,
        secrets: list[str] | tuple[str, ...] = (),
    ) -> Callable[[F], F]:
        """Register the decorated function as a phase.

        ``secrets``: the names of the secrets the phase reads with ``ctx.secret(name)``;
        each worker resolves them where it runs (``SISAS_SECRET_<NAME>``, or a file
        ``<name>`` in ``SISAS_SECRETS_DIR``) and the log records only which ones and a
        keyed digest of their version, never a value (docs/security.md).

        ``depends_on`` defaults to the parameters that name other phases. With
        ``map_over``, ``partial=True`` lets items fail for good (after their retries)
        without failing the phase: it completes once every item has ended, with ``None``
        in the failed items' places, so one bad task does not sink a queue. Raises
        :class:`InvalidPipeline` for a duplicate name or a bad policy.
        """

        def register(fn: F) -> F:
            phase_name = check_name(name or fn.__name__, "phase name")
            if phase_name in self.phases:
                raise InvalidPipeline(
                    f"pipeline {self.name}: phase {phase_name!r} is defined "
                    "twice: give one of them another name"
                )
            if retries < 0 or (timeout is not None and timeout <= 0):
                raise InvalidPipeline(f"phase {phase_name}: retries must be >= 0 and timeout > 0")
            if partial and not map_over:
                raise InvalidPipeline(
                    f"phase {phase_name}: partial=True is for a fan-out: add map_over="
                )
            _check_callable(phase_name, fn)
            hints = annotations_of(fn)
            sig = inspect.signature(fn)
            names = list(sig.parameters)
            if not names or names[0] != "ctx":
                raise InvalidPipeline(f"phase {phase_name}: the first parameter must be `ctx`")
            params = {p: hints.get(p, Any) for p in names[1:]}
            deps = (
                list(depends_on)
                if depends_on is not None
                else [p for p in params if p not in _RESERVED]
            )
            if map_over and map_over not in deps:
                deps.append(map_over)
            for param, annotation in params.items():
                check_parameter(phase_name, param, annotation)
            check_output(phase_name, hints.get("return", Any))
            self.phases[phase_name] = PhaseSpec(
                name=phase_name,
                fn=fn,
                depends_on=deps,
                params=params,
                returns=hints.get("return", Any),
                retries=retries,
                backoff=backoff,
                backoff_factor=backoff_factor,
                backoff_max=backoff_max,
                timeout=timeout,
                memory_limit=parse_memory(memory_limit),
                enabled=enabled,
                fatal=fatal,
                side_effects=side_effects,
                map_over=map_over,
                partial=partial,
                secrets=[check_name(s, "secret name") for s in secrets],
            )
            self._plan = None
            return fn

        return register

    def schedule(self, name: str, cron: str, **options: Any) -> None:
        """Declare a schedule of this pipeline: a run at each tick of ``cron`` (5 fields,
        or 6 with seconds first). ``options`` are those of a ``[[schedule]]`` table of a
        schedules file (docs/schedules.md): ``timezone``, ``input`` (built from the tick),
        ``config``, ``seed``, ``overlap``, ``catch_up``, ``grace``, ``tags``. Checked
        when a scheduler loads the pipeline (``sisas up --pipelines CODE``)."""
        self.schedules.append({**options, "name": name, "cron": cron, "pipeline": self.name})

    def invariant(self, id: str, *, phase: str, description: str = "") -> Callable[[F], F]:
        """Register a named predicate over ``phase``'s output.

        It returns True/False, or ``(passed, observed, expected)`` to record the values.
        """

        def register(fn: F) -> F:
            self._pending_invariants.append(
                InvariantSpec(id=id, phase=phase, description=description, fn=fn)
            )
            self._plan = None
            return fn

        return register

    def bridge(self, upstream: str, downstream: str, contract: Any) -> None:
        """Check ``upstream``'s output against ``contract`` before ``downstream`` runs.
        Raises :class:`InvalidPipeline` for a contract no stored output can meet."""
        check_parameter(downstream, f"bridge from {upstream}", contract)
        self._pending_bridges.append((upstream, downstream, contract))
        self._plan = None

    def plan(self) -> PipelinePlan:
        """Validate the DAG and return the plan. Raises :class:`InvalidPipeline`."""
        if self._plan is None:
            self._plan = self._build_plan()
        return self._plan

    def _build_plan(self) -> PipelinePlan:
        where = f"pipeline {self.name}"
        if not self.phases:
            raise InvalidPipeline(f"{where} has no phases: decorate functions with @pipe.phase()")
        for spec in self.phases.values():
            spec.invariants, spec.bridges = [], {}
            for dep in spec.depends_on:
                if dep not in self.phases:
                    raise InvalidPipeline(
                        f"{where}: phase {spec.name} depends on {dep!r}, which is not a phase "
                        f"(phases: {', '.join(self.phases)})"
                    )
            for p in spec.params:
                if p not in _RESERVED and p not in spec.depends_on:
                    raise InvalidPipeline(
                        f"{where}: phase {spec.name} takes {p!r}, which is "
                        "neither a dependency, `input` nor `item`"
                    )
            if "item" in spec.params and not spec.map_over:
                raise InvalidPipeline(
                    f"{where}: phase {spec.name} takes `item` but has no map_over="
                )
        for inv in self._pending_invariants:
            if inv.phase not in self.phases:
                raise InvalidPipeline(
                    f"{where}: invariant {inv.id} is on unknown phase {inv.phase!r}"
                )
            self.phases[inv.phase].invariants.append(inv)
        for up, down, contract in self._pending_bridges:
            if up not in self.phases or down not in self.phases:
                raise InvalidPipeline(f"{where}: bridge {up} -> {down} names an unknown phase")
            self.phases[down].bridges[up] = contract
        order = self._topological_order()
        phases = [self._phase_plan(self.phases[n]) for n in order]
        fingerprint = semantic_digest(
            {
                "name": self.name,
                "version": self.version,
                "phases": [p for p in phases],
                "code": {n: _source_digest(self.phases[n].fn) for n in order},
                "invariants": {i.id: _source_digest(i.fn) for i in self._pending_invariants},
                "contracts": {
                    n: [_type_name(t) for t in self.phases[n].params.values()]
                    + [_type_name(self.phases[n].returns)]
                    for n in order
                },
            }
        )
        return PipelinePlan(
            name=self.name,
            version=self.version,
            fingerprint=fingerprint,
            phases=phases,
            input_contract=_type_name(self.input) if self.input is not None else "",
            input_schema=self._input_schema(),
            circuit_threshold=self.circuit_threshold,
            circuit_cooldown=float(self.circuit_cooldown),
        )

    def _input_schema(self) -> str:
        """The run input's JSON Schema as JSON text (see ``PipelinePlan.input_schema``):
        of ``input=``, else of the ``input`` parameter of the first phase taking one;
        "" for an array or table contract, or a type pydantic cannot describe."""
        shape = self.input
        if shape is None:
            shape = next(
                (s.params["input"] for s in self.phases.values() if "input" in s.params), None
            )
        if shape is None or shape is Any or binary_name(shape):
            return ""
        from pydantic import PydanticUserError, TypeAdapter  # what the worker checks with

        try:
            schema = TypeAdapter(shape).json_schema()
        except (PydanticUserError, TypeError, ValueError):
            return ""
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))

    def _topological_order(self) -> list[str]:
        remaining = {n: set(s.depends_on) for n, s in self.phases.items()}
        order: list[str] = []
        while remaining:
            ready = [n for n in self.phases if n in remaining and not remaining[n]]
            if not ready:
                cycle = " -> ".join(sorted(remaining))
                raise InvalidPipeline(
                    f"pipeline {self.name} has a dependency cycle among: "
                    f"{cycle}; remove one of these dependencies"
                )
            for n in ready:
                order.append(n)
                del remaining[n]
            for deps in remaining.values():
                deps.difference_update(ready)
        return order

    @staticmethod
    def _phase_plan(spec: PhaseSpec) -> PhasePlan:
        contracts = [f"entry:{p}:{_type_name(t)}" for p, t in spec.params.items()]
        contracts += [f"exit:{_type_name(spec.returns)}"]
        contracts += [f"bridge:{up}:{_type_name(c)}" for up, c in spec.bridges.items()]
        return PhasePlan(
            name=spec.name,
            depends_on=list(spec.depends_on),
            retries=spec.retries,
            # float(): an int here would encode as 60 and decode as 60.0, so the sealed
            # signal would not be in canonical form.
            backoff=float(spec.backoff),
            backoff_factor=float(spec.backoff_factor),
            backoff_max=float(spec.backoff_max),
            timeout=None if spec.timeout is None else float(spec.timeout),
            memory_limit=spec.memory_limit,
            enabled=spec.enabled,
            fatal=spec.fatal,
            side_effects=spec.side_effects,
            map_over=spec.map_over,
            partial=spec.partial,
            contracts=contracts,
            invariants=[i.id for i in spec.invariants],
        )


def _check_callable(phase: str, fn: Callable[..., Any]) -> None:
    """Refuse what a worker cannot run as a phase, naming it and what to write instead.
    A plain function and an ``async def`` function (awaited by the worker) can run."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise InvalidPipeline(
            f"phase {phase}: {fn.__qualname__} is a generator (it uses yield): a phase "
            "returns its whole output; collect it (return list(...))"
        )
    if not inspect.isfunction(fn) and not inspect.ismethod(fn):
        raise InvalidPipeline(
            f"phase {phase}: {fn!r} is not a function: decorate a def or async def"
        )
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind is p.VAR_POSITIONAL else "**"
            raise InvalidPipeline(
                f"phase {phase}: {fn.__qualname__} takes {stars}{p.name}: a phase names each "
                "input it takes (ctx, then dependencies, `input` or `item`)"
            )
        if p.kind is p.POSITIONAL_ONLY and p.name != "ctx":
            raise InvalidPipeline(
                f"phase {phase}: {fn.__qualname__}'s parameter {p.name} is positional-only: "
                "inputs are passed by name; remove the `/`"
            )


def _source_digest(fn: Callable[..., Any]) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = getattr(fn, "__qualname__", repr(fn))
    return hashlib.sha256(source.encode()).hexdigest()
