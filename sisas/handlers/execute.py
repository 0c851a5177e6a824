"""Running one phase attempt: contracts in, the phase, contracts and invariants out.

``execute_phase`` is what every worker does, in-process or in a child process. It never
raises for a phase's failure: the outcome says what happened, with every check result,
so the orchestrator can record each one as a signal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec
import pydantic
from pydantic_core import PydanticSerializationError

from sisas.errors import PhaseError
from sisas.pipeline import Context, PhaseSpec, Pipeline, _type_name
from sisas.signals.digest import semantic_digest
from sisas.signals.inputs import ContractResult, InvariantResult
from sisas.signals.kinds import ERROR_KINDS, ErrorInfo, ErrorKind, Scalar, Violation

__all__ = ["Outcome", "PhaseInputs", "call_phase", "execute_phase", "violations_of"]


class PhaseInputs(msgspec.Struct, frozen=True, kw_only=True):
    """The bytes a phase receives: one artifact per input, or a gathered list of them."""

    values: dict[str, bytes] = {}
    gathered: dict[str, list[bytes]] = {}

    @classmethod
    def of(
        cls,
        inputs: Mapping[str, str],
        gathered: Mapping[str, list[str]],
        artifacts: Mapping[str, bytes],
    ) -> PhaseInputs:
        """The bytes of a scheduled phase's artifact digests, looked up in ``artifacts``.

        An empty digest in a gathered list is an item of a partial fan-out that failed:
        its place holds ``null``."""
        return cls(
            values={k: artifacts[v] for k, v in inputs.items()},
            gathered={k: [artifacts[a] if a else b"null" for a in v] for k, v in gathered.items()},
        )


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one attempt did. ``output`` is the serialised output when it completed, or
    the quarantined output when it was produced but failed its exit contract or an
    invariant (kept as evidence, never passed downstream)."""

    status: Literal["completed", "failed"]
    output: bytes = b""
    output_digest: str = ""
    item_count: int | None = None
    duration: float = 0.0
    error: ErrorInfo | None = None
    contracts: list[ContractResult] = []
    invariants: list[InvariantResult] = []


def _path(loc: tuple[int | str, ...], root: str) -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def violations_of(exc: pydantic.ValidationError, root: str) -> list[Violation]:
    """One violation per pydantic error, with a field path such as ``input.xs[3]``."""
    return [
        Violation(path=_path(tuple(e["loc"]), root), message=e["msg"], type=e["type"])
        for e in exc.errors()
    ]


@functools.lru_cache(maxsize=1024)
def _cached_adapter(t: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(t)


def _adapter(t: Any) -> pydantic.TypeAdapter[Any]:
    """A pydantic adapter for ``t``, built once per type (building one costs more than
    validating a small value with it)."""
    try:
        return _cached_adapter(t)
    except TypeError:  # an annotation that cannot be hashed
        return pydantic.TypeAdapter(t)


def _scalar(value: object) -> Scalar:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    return repr(value)


def _failed(
    clock: Callable[[], float],
    start: float,
    kind: ErrorKind,
    message: str,
    contracts: list[ContractResult],
    invariants: list[InvariantResult],
    *,
    retryable: bool = False,
    detail: str = "",
    quarantined: tuple[bytes, str] = (b"", ""),
) -> Outcome:
    return Outcome(
        status="failed",
        output=quarantined[0],
        output_digest=quarantined[1],
        duration=clock() - start,
        error=ErrorInfo(
            kind=kind,
            message=message,
            retryable=retryable,
            detail=detail,
        ),
        contracts=contracts,
        invariants=invariants,
    )


def _checked(
    contracts: list[ContractResult],
    contract: str,
    boundary: Literal["entry", "bridge"],
    root: str,
    validate: Callable[[], Any],
) -> tuple[bool, Any]:
    """Run one contract check, record its result; (passed, the validated value)."""
    try:
        value = validate()
    except pydantic.ValidationError as exc:
        violations = violations_of(exc, root)
        contracts.append(
            ContractResult(
                contract=contract, boundary=boundary, passed=False, violations=violations
            )
        )
        return False, None
    contracts.append(ContractResult(contract=contract, boundary=boundary, passed=True))
    return True, value


def _load_args(
    spec: PhaseSpec, inputs: PhaseInputs, item: int | None, contracts: list[ContractResult]
) -> dict[str, Any] | None:
    def argument(name: str, annotation: Any) -> Any:
        if name == "item":
            items = _adapter(list[Any]).validate_json(inputs.values[spec.map_over])
            return _adapter(annotation).validate_python(items[item or 0])
        if name in inputs.gathered:
            return _adapter(annotation).validate_python(
                [_adapter(Any).validate_json(b) for b in inputs.gathered[name]]
            )
        return _adapter(annotation).validate_json(inputs.values[name])

    args: dict[str, Any] = {}
    ok = True
    for name, annotation in spec.params.items():
        passed, args[name] = _checked(
            contracts,
            f"{name}:{_type_name(annotation)}",
            "entry",
            name,
            functools.partial(argument, name, annotation),
        )
        ok &= passed
    for upstream, bridge in spec.bridges.items():
        passed, _ = _checked(
            contracts,
            f"{upstream}:{_type_name(bridge)}",
            "bridge",
            upstream,
            functools.partial(_adapter(bridge).validate_json, inputs.values[upstream]),
        )
        ok &= passed
    return args if ok else None


def _check_invariants(spec: PhaseSpec, output: Any) -> list[InvariantResult]:
    results = []
    for inv in spec.invariants:
        observed: object = None
        expected: object = None
        try:
            verdict = inv.fn(output)
            if isinstance(verdict, tuple):
                passed, observed, expected = (bool(verdict[0]), *verdict[1:3])
            else:
                passed = bool(verdict)
        except Exception as exc:  # an invariant that crashes is a failed invariant
            passed, observed = False, f"{type(exc).__name__}: {exc}"
        results.append(
            InvariantResult(
                invariant=inv.id,
                passed=passed,
                description=inv.description,
                observed=_scalar(observed),
                expected=_scalar(expected),
            )
        )
    return results


def _quarantine(result: object) -> tuple[bytes, str]:
    """The bytes and digest of an output that failed its contract, when it has a JSON form."""
    try:
        data = _adapter(Any).dump_json(result)
        return data, semantic_digest(_adapter(Any).validate_json(data))
    except (PydanticSerializationError, ValueError, TypeError):
        return b"", ""


def call_phase(fn: Callable[..., Any], ctx: Context, args: Mapping[str, Any]) -> Any:
    """Call a phase's function; an ``async def`` one is awaited to its end on an event
    loop of its own (in another thread when this one runs a loop already, as in a test
    that calls ``sisas.testing.run_pipeline`` from an async test), so timeouts, retries
    and cancellation treat it as any other phase."""
    if not inspect.iscoroutinefunction(fn):
        return fn(ctx, **args)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fn(ctx, **args))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sisas-phase") as pool:
        return pool.submit(asyncio.run, fn(ctx, **args)).result()


def execute_phase(
    pipeline: Pipeline,
    phase: str,
    inputs: PhaseInputs,
    *,
    run_id: str,
    seed: int,
    attempt: int = 0,
    item: int | None = None,
    config: Mapping[str, Scalar] | None = None,
    progress: Callable[[float, str], None] | None = None,
    clock: Callable[[], float],
    cancel: threading.Event | None = None,
    secrets: Mapping[str, str] | None = None,
) -> Outcome:
    """Run one attempt of ``phase`` on ``inputs``; never raises for the phase's failures.
    ``cancel``: set by the worker when the run is cancelled (``ctx.cancelled``).

    The entry contracts (and bridges) are checked on the inputs, the phase is called,
    then its output is checked (:func:`_checked_output`). ``clock`` (e.g.
    ``time.perf_counter``) is passed in by the worker shell: the only time read here is
    for the duration it reports.
    """
    start = clock()
    contracts: list[ContractResult] = []
    spec = pipeline.phases.get(phase)
    if spec is None:
        missing = f"this worker's {pipeline.name} {pipeline.version} has no phase {phase!r}"
        return _failed(clock, start, "PhaseNotImplemented", missing, contracts, [])
    args = _load_args(spec, inputs, item, contracts)
    if args is None:
        bad = [v.path for c in contracts if not c.passed for v in c.violations]
        message = f"input of {phase} violates its contract at " + ", ".join(bad)
        return _failed(clock, start, "ContractViolation", message, contracts, [])
    ctx = Context(
        run_id=run_id,
        pipeline=pipeline.name,
        phase=phase,
        seed=seed,
        attempt=attempt,
        item=item,
        config=config,
        progress=progress,
        cancel=cancel,
        secrets=secrets,
    )
    # The phase is called here, not in a helper: the first frame of a crash's traceback
    # (error.detail) is this call.
    try:
        result = call_phase(spec.fn, ctx, args)
    except PhaseError as exc:
        return _failed(
            clock,
            start,
            exc.kind if exc.kind in ERROR_KINDS else "HardFailure",  # type: ignore[arg-type]
            str(exc),
            contracts,
            [],
            retryable=exc.retryable,
            detail=exc.detail,
        )
    except Exception as exc:
        return _failed(
            clock,
            start,
            "HardFailure",
            f"{type(exc).__name__}: {exc}",
            contracts,
            [],
            retryable=True,
            detail=traceback.format_exc(limit=8),
        )
    return _checked_output(spec, phase, result, contracts, clock, start)


def _checked_output(
    spec: PhaseSpec,
    phase: str,
    result: object,
    contracts: list[ContractResult],
    clock: Callable[[], float],
    start: float,
) -> Outcome:
    """The outcome of an attempt whose phase returned ``result``: failed when it breaks
    its exit contract or an invariant (:func:`_exit_checked`, :func:`_check_invariants`),
    with the output quarantined; else completed with the output's bytes and digest."""
    checked = _exit_checked(spec, phase, result, contracts, clock, start)
    if isinstance(checked, Outcome):
        return checked
    output, data = checked
    invariants = _check_invariants(spec, output)
    broken = [i.invariant for i in invariants if not i.passed]
    if broken:
        return _failed(
            clock,
            start,
            "InvariantViolation",
            f"output of {phase} breaks " + ", ".join(broken),
            contracts,
            invariants,
            quarantined=(data, semantic_digest(output)),
        )
    count = len(output) if isinstance(output, list | tuple) else None
    return Outcome(
        status="completed",
        output=data,
        output_digest=semantic_digest(output),
        item_count=count,
        duration=clock() - start,
        contracts=contracts,
        invariants=invariants,
    )


def _exit_checked(
    spec: PhaseSpec,
    phase: str,
    result: object,
    contracts: list[ContractResult],
    clock: Callable[[], float],
    start: float,
) -> tuple[Any, bytes] | Outcome:
    """Check ``result`` against the phase's exit contract and record the check; the
    output as a later phase reads it back (validated, dumped, validated again) and its
    bytes, or the failed outcome when it breaks the contract (quarantined when it has a
    JSON form) or cannot be stored."""
    out_contract = _type_name(spec.returns)
    try:
        adapter = _adapter(spec.returns)
        output = adapter.validate_python(result)
        data = adapter.dump_json(output)
        output = adapter.validate_json(data)
    except pydantic.ValidationError as exc:
        contracts.append(
            ContractResult(
                contract=out_contract,
                boundary="exit",
                passed=False,
                violations=violations_of(exc, "output"),
            )
        )
        return _failed(
            clock,
            start,
            "ContractViolation",
            f"output of {phase} violates its contract",
            contracts,
            [],
            quarantined=_quarantine(result),
        )
    except PydanticSerializationError as exc:
        return _failed(
            clock,
            start,
            "ContractViolation",
            f"output of {phase} cannot be stored: {exc}",
            contracts,
            [],
        )
    contracts.append(ContractResult(contract=out_contract, boundary="exit", passed=True))
    return output, data
