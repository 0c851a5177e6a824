"""Drive one run to its end in-process: decide, execute, report, decide again.

No bus, no threads: the orchestrator's pure decisions and the worker's phase execution
in a loop, with artifacts in a dict. Used by the tests of the orchestration rules, as
the reference when a distributed run must give the same fingerprint, and by
:mod:`sisas.testing`, which overrides :meth:`LocalRun.execute` to enforce timeouts.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime

from sisas.handlers.attempt_log import AttemptLog
from sisas.handlers.circuit import Circuit
from sisas.handlers.execute import Outcome, PhaseInputs, execute_phase
from sisas.handlers.orchestrator import decide_full
from sisas.handlers.state import RunState
from sisas.pipeline import Pipeline
from sisas.signals.digest import bytes_digest
from sisas.signals.envelope import Signal
from sisas.signals.inputs import Input, PhaseReport, StartRun
from sisas.signals.kinds import PhaseScheduled, Scalar

__all__ = ["LocalRun"]


def _no_time() -> float:
    return 0.0


class LocalRun:
    """A run of ``pipeline`` whose signals accumulate in ``signals``."""

    def __init__(
        self,
        pipeline: Pipeline,
        run_id: str,
        *,
        at: datetime,
        clock: Callable[[], float],
        circuits: dict[str, Circuit] | None = None,
        secrets: Mapping[str, str] | None = None,
        log_clock: Callable[[], float] | None = None,
    ) -> None:
        self.log_clock = log_clock or _no_time
        """What the attempts' log lines are timed with (apart from ``clock``, whose
        readings time the attempts themselves: a log line never changes a duration)."""
        self.secrets = dict(secrets or {})
        """Values of the secrets phases read (``ctx.secret``): what a worker would resolve."""
        self.circuits = circuits if circuits is not None else {}
        """Circuits by phase, shared with other runs when the caller passes one dict."""
        self.pipeline = pipeline
        self.state = RunState.new(pipeline.name, run_id)
        self.signals: list[Signal] = []
        self.artifacts: dict[str, bytes] = {}
        self.logs: dict[tuple[str, int | None, int], str] = {}
        """Each attempt's log (``ctx.log`` at INFO and above, its traceback) by phase,
        item and attempt; attempts that logged nothing are absent."""
        self._attempt_logs: dict[str, AttemptLog] = {}
        self.at = at
        self.clock = clock
        self._n = 0
        self._open: deque[Signal] = deque()
        """phase_scheduled signals, in log order, not yet seen taken."""

    def _id(self, what: str) -> str:
        self._n += 1
        return f"{self.state.run_id}:{what}:{self._n}"

    def send(self, inp: Input) -> list[Signal]:
        decision = decide_full(
            self.state, inp, {self.pipeline.name: self.pipeline.plan()}, self.circuits
        )
        self.circuits.update(decision.circuits)
        new = decision.signals
        self.state = decision.state
        self._open.extend(s for s in new if isinstance(s.body, PhaseScheduled))
        self.signals.extend(new)
        return new

    def start(
        self, input_bytes: bytes, *, seed: int = 0, config: Mapping[str, Scalar] | None = None
    ) -> None:
        key = bytes_digest(input_bytes)
        self.artifacts[key] = input_bytes
        self.send(
            StartRun(
                id=self._id("start"),
                pipeline=self.pipeline.name,
                run_id=self.state.run_id,
                at=self.at,
                seed=seed,
                input_digest=key,
                config=dict(config or {}),
            )
        )

    def _waiting(self, s: Signal) -> bool:
        """Whether the phase (or item) ``s`` schedules is still at that attempt, unstarted."""
        body = s.body
        assert isinstance(body, PhaseScheduled)
        ps = self.state.phase(s.phase)
        st = ps.item_states.get(body.item) if body.item is not None else ps
        return st is not None and st.status == "scheduled" and st.attempt == s.attempt

    def pending_work(self) -> list[Signal]:
        """phase_scheduled signals whose phase (or item) has not reported since, in log
        order. A schedule seen taken is dropped for good: decide schedules each attempt
        once, so nothing can make it wait again (and ``run`` costs O(1) per step)."""
        waiting = [s for s in self._open if self._waiting(s)]
        self._open = deque(waiting)
        return waiting

    def _next_pending(self) -> Signal | None:
        """The first of :meth:`pending_work`, dropping the taken schedules before it."""
        while self._open:
            if self._waiting(self._open[0]):
                return self._open[0]
            self._open.popleft()
        return None

    def work(self, scheduled: Signal) -> None:
        """What a worker does with one phase_scheduled signal."""
        body = scheduled.body
        assert isinstance(body, PhaseScheduled)
        common = {
            "pipeline": self.pipeline.name,
            "run_id": self.state.run_id,
            "at": self.at,
            "phase": scheduled.phase,
            "attempt": scheduled.attempt,
            "item": body.item,
            "worker": "local",
        }
        self.send(PhaseReport(id=self._id("started"), status="started", **common))  # type: ignore[arg-type]
        inputs = PhaseInputs.of(body.inputs, body.gathered, self.artifacts)
        out, timed_out = self.execute(scheduled, inputs)
        written = self._attempt_logs.pop(scheduled.id, None)
        text = written.render().decode() if written is not None else ""
        if text:
            self.logs[(scheduled.phase, body.item, scheduled.attempt)] = text
        artifact = ""
        if out.output:  # an output, or a failed one's quarantined output
            artifact = bytes_digest(out.output)
            self.artifacts[artifact] = out.output
        self.send(
            PhaseReport(
                id=self._id("report"),
                status="timed_out" if timed_out else out.status,
                output_digest=out.output_digest,
                artifact=artifact,
                item_count=out.item_count,
                duration=out.duration,
                error=out.error,
                contracts=out.contracts,
                invariants=out.invariants,
                **common,  # type: ignore[arg-type]
            )
        )

    def attempt_of(self, scheduled: Signal, inputs: PhaseInputs) -> Callable[[], Outcome]:
        """The attempt ``scheduled`` names, ready to call: :func:`execute_phase` with the
        run's seed, attempt, item and configuration, timed by ``self.clock``."""
        body = scheduled.body
        assert isinstance(body, PhaseScheduled)
        written = self._attempt_logs[scheduled.id] = AttemptLog(self.log_clock)
        return functools.partial(
            execute_phase,
            self.pipeline,
            scheduled.phase,
            inputs,
            run_id=self.state.run_id,
            seed=body.seed,
            attempt=scheduled.attempt,
            item=body.item,
            config=self.state.config,
            clock=self.clock,
            secrets={k: v for k, v in self.secrets.items() if k in self._declared(scheduled)},
            log=written,
        )

    def attempt_log(self, scheduled: Signal) -> AttemptLog | None:
        """The log of the attempt ``scheduled`` names, once :meth:`attempt_of` made it."""
        return self._attempt_logs.get(scheduled.id)

    def _declared(self, scheduled: Signal) -> list[str]:
        spec = self.pipeline.phases.get(scheduled.phase)
        return spec.secrets if spec is not None else []

    def execute(self, scheduled: Signal, inputs: PhaseInputs) -> tuple[Outcome, bool]:
        """Run one attempt; return its outcome and whether it timed out.

        Here the attempt runs to its end in the caller's thread: no timeout or memory
        limit is enforced, so it never times out. A subclass may run it elsewhere
        (:mod:`sisas.testing` runs a phase with a timeout in a thread it abandons on
        overrun). An attempt that timed out is reported with status ``timed_out``, as
        the worker reports the child it killed: its outcome then holds what the worker's
        does, no output and no checks, only the time it ran.
        """
        return self.attempt_of(scheduled, inputs)(), False

    def run(self, max_steps: int = 10_000) -> RunState:
        """Work every pending phase until the run ends (or nothing is pending)."""
        for _ in range(max_steps):
            if self.state.ended:
                break
            scheduled = self._next_pending()
            if scheduled is None:
                break
            self.work(scheduled)
        return self.state
