"""A handle on one run: follow its signals, wait for its result, cancel it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sisas.errors import RunCancelledError, RunFailedError
from sisas.handlers.state import RunState, evolve
from sisas.signals import ErrorInfo, Signal, StoredSignal
from sisas.signals.kinds import ENDING_KINDS, RunCancelled

if TYPE_CHECKING:
    from sisas.client.client import Client

__all__ = ["RunHandle", "RunResult"]


@dataclass(frozen=True)
class RunResult:
    """How a run ended, folded from its log."""

    run_id: str
    pipeline: str
    status: str
    """``completed``, ``failed`` or ``cancelled``."""
    fingerprint: str = ""
    """The determinism fingerprint (completed runs)."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Semantic digest of each completed phase's output, by phase (read the values with
    :meth:`RunHandle.output`)."""
    failed_phase: str = ""
    error: ErrorInfo | None = None
    seed: int = 0
    signals: int = 0
    """Signals in the run's log."""
    retries: int = 0
    """Attempts beyond the first, over every phase and item."""
    requested_at: datetime | None = None
    ended_at: datetime | None = None
    state: RunState | None = field(default=None, repr=False, compare=False)
    """The whole folded state: phases, items, checks."""

    @property
    def duration(self) -> float | None:
        """Seconds from the request to the end, as recorded in the log."""
        if self.requested_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.requested_at).total_seconds()

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @classmethod
    def of(cls, state: RunState, signals: int, retries: int) -> RunResult:
        outputs = {
            name: ps.output_digest
            for name, ps in state.phases.items()
            if ps.status == "completed" and ps.output_digest
        }
        return cls(
            run_id=state.run_id,
            pipeline=state.pipeline,
            status=state.status,
            fingerprint=state.fingerprint,
            outputs=outputs,
            failed_phase=state.failed_phase,
            error=state.error,
            seed=state.seed,
            signals=signals,
            retries=retries,
            requested_at=state.requested_at,
            ended_at=state.ended_at,
            state=state,
        )


class RunHandle:
    """One run: :meth:`result`, :meth:`signals`, :meth:`cancel`, :meth:`output`."""

    def __init__(self, client: Client, run_id: str, pipeline: str) -> None:
        self.client = client
        self.run_id = run_id
        self.pipeline = pipeline

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    async def signals(self, *, follow: bool = True) -> AsyncGenerator[Signal, None]:
        """The run's signals in order from its first; with ``follow``, live ones as they
        are appended until the run ends (waiting for a run that is only requested).
        Messages in the log that are not valid signals are skipped (``sisas replay
        verify`` names them)."""
        log = self.client.bus.log
        if not follow:
            for rec in await log.read_run(self.run_id):
                if isinstance(rec, StoredSignal):
                    yield rec.signal
            return
        async with contextlib.aclosing(log.follow_run(self.run_id)) as records:
            async for rec in records:
                if isinstance(rec, StoredSignal):
                    yield rec.signal
                    if rec.signal.kind in ENDING_KINDS:
                        return

    async def result(self, timeout: float | None = None, *, check: bool = True) -> RunResult:
        """Wait until the run ends and say how. Raises :class:`~sisas.errors.RunFailedError`
        or :class:`~sisas.errors.RunCancelledError` (their ``result`` is this result) when
        it did not complete, unless ``check`` is False; ``TimeoutError`` after ``timeout``
        seconds (the run goes on)."""
        state: RunState | None = None
        n = retries = 0
        cancelled: RunCancelled | None = None
        try:
            async with asyncio.timeout(timeout), contextlib.aclosing(self.signals()) as signals:
                async for signal in signals:
                    state = evolve(state or RunState.new(signal.pipeline, signal.run_id), signal)
                    n += 1
                    retries += signal.kind == "phase_retry_scheduled"
                    if isinstance(signal.body, RunCancelled):
                        cancelled = signal.body
        except TimeoutError:
            status = state.status if state is not None else "not in the log yet"
            why = await self.client.stalled(state.pipeline if state else self.pipeline, state)
            raise TimeoutError(
                f"run {self.run_id} did not end within {timeout}s (it is {status}){why}; "
                "it goes on: wait again, or cancel it"
            ) from None
        assert state is not None  # follow ends only at an ending signal
        self.pipeline = state.pipeline
        result = RunResult.of(state, n, retries)
        if check and result.status != "completed":
            where = f" in {result.failed_phase}" if result.failed_phase else ""
            error = f": {result.error.kind}: {result.error.message}" if result.error else ""
            if cancelled is not None:
                who = f" by {cancelled.requested_by}" if cancelled.requested_by else ""
                raise RunCancelledError(
                    f"run {self.run_id} cancelled{who}"
                    + (f": {cancelled.reason}" if cancelled.reason else ""),
                    run_id=self.run_id,
                    status=result.status,
                    kind="Cancelled",
                    detail=cancelled.reason,
                    result=result,
                )
            kind = RunCancelledError if result.status == "cancelled" else RunFailedError
            raise kind(
                f"run {self.run_id} {result.status}{where}{error}",
                run_id=self.run_id,
                status=result.status,
                phase=result.failed_phase,
                kind=result.error.kind if result.error else "",
                detail=result.error.detail if result.error else "",
                result=result,
            )
        return result

    async def status(self) -> str:
        """Where the run is now: ``new`` (not in the log yet), ``requested``,
        ``running``, ``completed``, ``failed`` or ``cancelled``."""
        return (await self.client.state(self.run_id)).status

    async def cancel(self, reason: str = "cancelled by the client") -> bool:
        """See :meth:`Client.cancel`."""
        return await self.client.cancel(self.run_id, reason, pipeline=self.pipeline)

    async def output(self, phase: str) -> Any:
        """See :meth:`Client.output`."""
        return await self.client.output(self.run_id, phase)

    async def output_bytes(self, phase: str) -> bytes:
        """See :meth:`Client.output_bytes`."""
        return await self.client.output_bytes(self.run_id, phase)
