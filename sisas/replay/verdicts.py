"""Verdicts of verification and rerun: data, never text. The CLI renders them."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from sisas.signals.plan import Environment

__all__ = [
    "ArtifactProblem",
    "CheckDiff",
    "FieldDiff",
    "Finding",
    "PhaseRerun",
    "Problem",
    "RerunVerdict",
    "RowDiff",
    "RunVerdict",
    "VerifyReport",
]

Problem: TypeAlias = Literal[
    "corrupt",
    "tampered",
    "misplaced",
    "stream_gap",
    "gap",
    "reordered",
    "duplicate",
    "fork",
    "broken_link",
    "bad_id",
    "out_of_place",
    "bad_fingerprint",
    "unsigned",
    "bad_signature",
    "untrusted_signer",
    "signer_changed",
    "projection_differs",
    "projection_missing",
]
"""Every problem verification can report; docs/replay.md says what each means."""


class Finding(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One thing wrong, located in the log."""

    problem: Problem
    message: str
    run_id: str = ""
    stream_seq: int = 0
    run_seq: int = 0
    kind: str = ""
    signal_id: str = ""


class FieldDiff(msgspec.Struct, frozen=True, kw_only=True):
    """A field whose value differs: ``path`` like ``clusters[2].weight``."""

    path: str
    recorded: Any = None
    new: Any = None


class RowDiff(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A row of a projection table that is not what the run's signals produce: ``key``
    names it (the table's key columns); ``change`` says whether the projection holds it
    with other values (``columns``: ``recorded`` the projection's, ``new`` the log's),
    holds it though the log does not produce it (``extra``), or lacks it (``missing``)."""

    table: str
    key: list[Any]
    change: Literal["differs", "extra", "missing"]
    columns: list[FieldDiff] = []


class RunVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """Whether one run's log is intact, and the state it folds to."""

    run_id: str
    pipeline: str
    intact: bool
    signals: int
    status: str
    fingerprint: str = ""
    head_seq: int = 0
    head_hash: str = ""
    state_digest: str = ""
    first_stream_seq: int = 0
    last_stream_seq: int = 0
    signers: list[str] = []
    signed: Literal["all", "none", "some"] = "none"
    projection: Literal["equal", "differs", "missing", "not_checked"] = "not_checked"
    projection_diff: list[FieldDiff] = []
    projection_tables: list[str] = []
    """The tables whose rows of this run differ from what its signals produce."""
    projection_rows: list[RowDiff] = []
    """The differing rows (the first few of each table)."""
    findings: list[Finding] = []


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """Verification of one run or the whole log, up to ``stream_seq``."""

    intact: bool
    runs: int
    intact_runs: int
    signals: int
    stream_seq: int
    first: Finding | None = None
    log_findings: list[Finding] = []
    verdicts: list[RunVerdict] = []
    trusted_keys: list[str] = []


class ArtifactProblem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An artifact of the run that could not be read as the log records it: the
    evidence is incomplete. ``used_as`` says where the run used it, in log order
    (``output of compose``, ``input of score[3]``, ``run input``)."""

    digest: str
    problem: Literal["missing", "damaged"]
    used_as: list[str] = []
    detail: str = ""

    def describe(self) -> str:
        """One line: the digest, what is wrong, where the run used it, and why."""
        where = f" ({'; '.join(self.used_as)})" if self.used_as else ""
        return f"{self.digest} {self.problem}{where}" + (f": {self.detail}" if self.detail else "")


class CheckDiff(msgspec.Struct, frozen=True, kw_only=True):
    """A contract or invariant whose result differs on rerun (None: not checked)."""

    check: str
    recorded: bool | None
    new: bool | None


class PhaseRerun(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One phase (or item) executed again, compared with its recorded attempt."""

    phase: str
    item: int | None = None
    attempt: int = 0
    equal: bool
    recorded_status: str
    new_status: str
    recorded_digest: str = ""
    new_digest: str = ""
    checks: list[CheckDiff] = []
    diff: list[FieldDiff] = []
    error: str = ""
    seconds: float = 0.0


class RerunVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """A run executed again from its recorded inputs and seeds.

    ``deterministic`` is true only when every attempt that could be rerun gave what it
    recorded, none was kept from the comparison by an unreadable input, and the rerun
    fingerprint equals the recorded one. ``evidence_complete`` is true only when every
    artifact the rerun read (inputs and recorded outputs) was there and hashed to its
    digest; a verdict is sound when both hold."""

    run_id: str
    pipeline: str
    deterministic: bool
    workers: int
    recorded_fingerprint: str
    fingerprint: str
    phases: list[PhaseRerun] = []
    first_divergence: PhaseRerun | None = None
    not_rerun: dict[str, str] = {}
    evidence_complete: bool = True
    artifacts_read: int = 0
    """Artifacts read and found to hash to their digests."""
    artifact_problems: list[ArtifactProblem] = []
    """Each artifact the rerun needed that was missing or damaged (digest, where used)."""
    side_effects_rerun: list[str] = []
    """Phases with side effects executed again (only with ``--include-side-effects``)."""
    recorded_code: str = ""
    """The pipeline code fingerprint the run was started with."""
    current_code: str = ""
    """The fingerprint of the code that reran it (differs when the code changed)."""
    recorded_environment: Environment | None = None
    """The environment recorded with the run (None for runs recorded before sisas kept it)."""
    current_environment: Environment | None = None
    """The environment the rerun executed in."""
    attempt_environments: dict[str, Environment] = {}
    """The environments the recorded attempts ran in, by the digest of their record (one
    per worker setup; several when a fleet of mixed workers ran the run)."""
    environment_changes: list[str] = []
    """Each difference between the two, ``numpy 2.3.1 -> 2.4.0``; empty when equal."""
    compute_seconds: float = 0.0
