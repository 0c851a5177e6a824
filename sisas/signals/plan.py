"""The plan of a pipeline: what the orchestrator needs to decide, as plain data.

A plan is derived from the pipeline's code by the worker that registers it and recorded
in the run's ``run_started`` signal, so every later decision can be replayed from the
log alone, without the code.
"""

from __future__ import annotations

import msgspec

__all__ = ["Environment", "PhasePlan", "PipelinePlan"]


class Environment(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """Where a pipeline's code ran: interpreter, platform, installed distributions.

    ``packages`` maps each distribution the pipeline's code and sisas import (and what
    those require) to its exact version. Recorded with the plan, never part of its
    fingerprint: the same code under other versions is the same code, and a rerun names
    what differs (:meth:`changes`).
    """

    python: str
    implementation: str = "CPython"
    platform: str = ""
    packages: dict[str, str] = {}
    nats_server: str = ""

    def changes(self, now: Environment) -> list[str]:
        """What differs from this (recorded) environment in ``now``, one line each:
        ``numpy 2.3.1 -> 2.4.0``, ``pandas 2.2.0 -> (not installed)``; empty when equal."""
        out = []
        python = f"{self.implementation} {self.python}", f"{now.implementation} {now.python}"
        for label, (was, new) in (
            ("python", python),
            ("platform", (self.platform, now.platform)),
            ("nats-server", (self.nats_server, now.nats_server)),
        ):
            if was != new and was and new:  # "": not known on one side (an offline rerun)
                out.append(f"{label} {was} -> {new}")
        for name in sorted(self.packages.keys() | now.packages.keys()):
            old, current = self.packages.get(name), now.packages.get(name)
            if old != current:
                out.append(f"{name} {old or '(not installed)'} -> {current or '(not installed)'}")
        return out


class PhasePlan(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """One phase as the orchestrator sees it: dependencies and policies, no code."""

    name: str
    depends_on: list[str] = []
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
    """A fan-out whose items may fail for good: it completes with null in their places."""
    contracts: list[str] = []
    invariants: list[str] = []


class PipelinePlan(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    gc=False,
):
    """A pipeline version: its phases in a topological order and its fingerprint.

    ``fingerprint`` digests the plan and the source of every phase, contract and
    invariant, so a run records exactly which code it ran.
    """

    name: str
    version: str
    fingerprint: str
    phases: list[PhasePlan]
    input_contract: str = ""
    input_schema: str = ""
    """The JSON Schema of the run input the pipeline declares (``Pipeline(input=...)``,
    else its phases' ``input`` parameter), as JSON text; "" when it has none (an array
    or table contract). The dashboard shows and checks it before launching a run; not
    part of ``fingerprint``, and left out of the plan ``run_started`` records."""
    circuit_threshold: int = 5
    circuit_cooldown: float = 60.0
    environment: Environment | None = None
    """Where the worker that registered this plan runs (not part of ``fingerprint``)."""

    def phase(self, name: str) -> PhasePlan:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)
