"""Verifying runs from their stored records: chain, placement, refold, signatures.

``RunVerifier`` takes one run's records in stream order, one at a time, so a whole log
is verified in one pass with one small object per run. It recomputes nothing the
decoder already proved (each stored signal's own hash and canonical bytes); it checks
what only the sequence can show (gaps, reordering, duplicates, forks, links, ids), that
each signal is legal where it stands (:mod:`sisas.replay.rules`), signatures, and the
state the run folds to under the current ``evolve``. Pure: records in, verdict out.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from sisas.handlers.state import RunState, evolve, state_digest
from sisas.handlers.tables import dec_hook, enc_hook
from sisas.replay.fielddiff import field_diff
from sisas.replay.rules import violation
from sisas.replay.verdicts import Finding, Problem, RowDiff, RunVerdict, VerifyReport
from sisas.signals.envelope import GENESIS, Signal, signal_id
from sisas.signals.names import parse_run_subject
from sisas.signals.records import CorruptMessage, LogGap, LogRecord, StoredSignal
from sisas.signals.signing import check_signature

__all__ = ["LogVerifier", "Projected", "RunVerifier", "assemble", "report"]


class Projected(msgspec.Struct, frozen=True, kw_only=True):
    """What the projection holds for a run: its state digest, and the state for a diff;
    the tables whose rows of the run differ from what its signals produce, and the rows."""

    digest: str | None
    state: RunState | None = None
    tables: list[str] = []
    rows: list[RowDiff] = []


_STATE_ENCODER = msgspec.json.Encoder(enc_hook=enc_hook)
_STATE_DECODER = msgspec.json.Decoder(RunState, dec_hook=dec_hook)


def _corrupt_problem(reason: str) -> Problem:
    if reason.startswith("hash mismatch"):
        return "tampered"
    if " is stored on " in reason:
        return "misplaced"
    return "corrupt"


def _prefix(hash_hex: str) -> int:
    return int(hash_hex[:16], 16)


class RunVerifier:
    """Verifies one run, record by record."""

    def __init__(self, run_id: str, pipeline: str, *, trusted: frozenset[str] = frozenset()):
        self.run_id = run_id
        self.pipeline = pipeline
        self.trusted = trusted
        self.state = RunState.new(pipeline, run_id)
        self.signals = 0
        self.first_stream_seq = 0
        self.last_stream_seq = 0
        self._expected = 1
        self._prev = GENESIS
        self._after_corrupt = False
        self._hashes = array("Q")  # 64-bit prefix of each seq's hash: duplicates vs forks
        self._missing: dict[int, int] = {}  # run seq -> index of its gap finding
        self._findings: list[Finding] = []
        self._signers: list[str] = []
        self._unsigned = 0

    def __getstate__(self) -> dict[str, object]:
        # Sent to another process as its canonical JSON: a pickled Struct keeps a float
        # equal to its field's default but not the default itself, which msgspec's
        # omit_defaults (and so the state digest) tells apart.
        state = dict(self.__dict__)
        state["state"] = _STATE_ENCODER.encode(self.state)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        state["state"] = _STATE_DECODER.decode(state["state"])  # type: ignore[arg-type]
        self.__dict__.update(state)

    def _find(self, problem: Problem, message: str, stream_seq: int, s: Signal | None) -> None:
        self._findings.append(
            Finding(
                problem=problem,
                message=message,
                run_id=self.run_id,
                stream_seq=stream_seq,
                run_seq=s.seq if s else 0,
                kind=s.kind if s else "",
                signal_id=s.id if s else "",
            )
        )

    def add(self, record: StoredSignal | CorruptMessage) -> None:
        if not self.first_stream_seq:
            self.first_stream_seq = record.stream_seq
        self.last_stream_seq = record.stream_seq
        if isinstance(record, CorruptMessage):
            self._find(_corrupt_problem(record.reason), record.reason, record.stream_seq, None)
            self._after_corrupt = True
            return
        s, at = record.signal, record.stream_seq
        self.signals += 1
        if s.seq < self._expected:
            self._again(s, at)
            return
        if s.seq > self._expected:
            missing = range(self._expected, s.seq)
            if not (self._after_corrupt and len(missing) == 1):
                for seq in missing:
                    self._missing[seq] = len(self._findings)
                first, last = missing[0], missing[-1]
                what = f"seq {first}" if first == last else f"seq {first}..{last}"
                self._find("gap", f"{what} missing before seq {s.seq}", at, s)
        elif s.prev != self._prev and not self._after_corrupt:
            self._find(
                "broken_link", f"prev of seq {s.seq} is not the hash of seq {s.seq - 1}", at, s
            )
        if s.id != signal_id(s.run_id, s.seq):
            self._find("bad_id", f"id {s.id!r} should be {signal_id(s.run_id, s.seq)!r}", at, s)
        self._after_corrupt = False
        self._signature(s, at)
        rule = violation(self.state, s)
        if rule is not None:
            self._find(rule[0], rule[1], at, s)  # type: ignore[arg-type]
        self.state = evolve(self.state, s)
        self._hashes.extend([0] * (s.seq - 1 - len(self._hashes)))
        self._hashes.append(_prefix(s.hash))
        self._expected, self._prev = s.seq + 1, s.hash

    def _again(self, s: Signal, at: int) -> None:
        gap = self._missing.pop(s.seq, None)
        if gap is not None:
            earlier = self._findings[gap]
            self._findings[gap] = msgspec.structs.replace(
                earlier,
                problem="reordered",
                message=f"seq {s.seq} is stored after seq {earlier.run_seq} "
                f"(at stream seq {at}, not before {earlier.stream_seq})",
            )
        elif s.seq <= len(self._hashes) and self._hashes[s.seq - 1] == _prefix(s.hash):
            self._find("duplicate", f"seq {s.seq} is stored twice", at, s)
        else:
            self._find("fork", f"a second, different signal claims seq {s.seq}", at, s)

    def _signature(self, s: Signal, at: int) -> None:
        check = check_signature(s, self.trusted)
        if check.status == "unsigned":
            self._unsigned += 1
            if self.trusted or self._signers:
                self._find("unsigned", "signal is not signed in a signed run", at, s)
            return
        if check.status == "invalid":
            self._find("bad_signature", check.message, at, s)
            return
        if check.status == "untrusted":
            self._find("untrusted_signer", check.message, at, s)
        elif self._signers and check.signer not in self._signers and not self.trusted:
            self._find(
                "signer_changed",
                f"signed by {check.signer[:12]}…, the run's earlier signals by "
                f"{self._signers[0][:12]}…",
                at,
                s,
            )
        if check.signer not in self._signers:
            self._signers.append(check.signer)

    def verdict(self, projected: Projected | None = None) -> RunVerdict:
        findings = sorted(self._findings, key=lambda f: (f.stream_seq, f.run_seq))
        digest = state_digest(self.state)
        projection: Literal["equal", "differs", "missing", "not_checked"] = "not_checked"
        diff = []
        if projected is not None:
            if projected.digest is None:
                projection = "missing"
                findings.append(
                    Finding(
                        problem="projection_missing",
                        message="the projection has no state for this run: rebuild it "
                        "with `sisas projections rebuild`",
                        run_id=self.run_id,
                    )
                )
            elif projected.digest != digest or projected.tables:
                projection = "differs"
                if projected.state is not None:
                    diff = field_diff(
                        msgspec.to_builtins(projected.state, enc_hook=enc_hook),
                        msgspec.to_builtins(self.state, enc_hook=enc_hook),
                    )
                findings.append(
                    Finding(
                        problem="projection_differs",
                        message=_differs(projected, diff[0].path if diff else ""),
                        run_id=self.run_id,
                    )
                )
            else:
                projection = "equal"
        signed: Literal["all", "none", "some"] = (
            "none" if not self._signers else ("all" if not self._unsigned else "some")
        )
        return RunVerdict(
            run_id=self.run_id,
            pipeline=self.pipeline,
            intact=not findings,
            signals=self.signals,
            status=self.state.status,
            fingerprint=self.state.fingerprint,
            head_seq=self.state.head.seq,
            head_hash=self.state.head.hash,
            state_digest=digest,
            first_stream_seq=self.first_stream_seq,
            last_stream_seq=self.last_stream_seq,
            signers=list(self._signers),
            signed=signed,
            projection=projection,
            projection_diff=diff,
            projection_tables=[] if projected is None else projected.tables,
            projection_rows=[] if projected is None else projected.rows,
            findings=findings,
        )


def _differs(projected: Projected, path: str) -> str:
    if not projected.tables:
        where = f" at {path}" if path else ""
        return (
            f"the projection's state differs from the refold{where}: "
            "rebuild it with `sisas projections rebuild`"
        )
    first = ""
    if projected.rows:
        row = projected.rows[0]
        key = ", ".join(map(str, row.key))
        cols = ", ".join(c.path for c in row.columns)
        first = f"; {row.table} row ({key}) " + (
            f"differs in {cols}" if row.change == "differs" else f"is {row.change}"
        )
    return (
        f"the projection's {', '.join(projected.tables)} rows differ from what the run's "
        f"signals produce{first}: rebuild it with `sisas projections rebuild`"
    )


class LogVerifier:
    """Verifies every run of a log in one pass over its records."""

    def __init__(self, *, trusted: frozenset[str] = frozenset(), only: str | None = None):
        self.trusted = trusted
        self.only = only
        self.runs: dict[str, RunVerifier] = {}
        self.findings: list[Finding] = []
        self.stream_seq = 0

    def _run(self, run_id: str, pipeline: str) -> RunVerifier:
        verifier = self.runs.get(run_id)
        if verifier is None:
            verifier = self.runs[run_id] = RunVerifier(run_id, pipeline, trusted=self.trusted)
        return verifier

    def add(self, record: LogRecord) -> None:
        if isinstance(record, LogGap):
            self.stream_seq = max(self.stream_seq, record.last)
            self.findings.append(
                Finding(
                    problem="stream_gap",
                    message=f"stream seq {record.first}..{record.last} missing from the log",
                    stream_seq=record.first,
                )
            )
            return
        self.stream_seq = max(self.stream_seq, record.stream_seq)
        if isinstance(record, StoredSignal):
            s = record.signal
            if self.only is None or s.run_id == self.only:
                self._run(s.run_id, s.pipeline).add(record)
            return
        parsed = parse_run_subject(record.subject)
        if parsed is None:
            self.findings.append(
                Finding(problem="corrupt", message=record.reason, stream_seq=record.stream_seq)
            )
        elif self.only is None or parsed[1] == self.only:
            self._run(parsed[1], parsed[0]).add(record)

    def extend(self, records: Iterable[LogRecord]) -> LogVerifier:
        for record in records:
            self.add(record)
        return self


def report(verifier: LogVerifier, projected: Mapping[str, Projected] | None = None) -> VerifyReport:
    """The report over every run ``verifier`` saw; ``projected`` holds the projection's
    view of the runs it can vouch for (a run left out is not compared)."""
    verdicts = [
        v.verdict(None if projected is None else projected.get(run_id))
        for run_id, v in verifier.runs.items()
    ]
    return assemble(verdicts, verifier.findings, verifier.stream_seq, verifier.trusted)


def assemble(
    verdicts: Iterable[RunVerdict],
    log_findings: list[Finding],
    stream_seq: int,
    trusted: frozenset[str],
) -> VerifyReport:
    """The report over ``verdicts`` (of one reader, or of several that split the log by
    run), in the order their runs start in the log."""
    ordered = sorted(verdicts, key=lambda v: (v.first_stream_seq, v.run_id))
    firsts = [v.findings[0] for v in ordered if v.findings] + log_findings[:1]
    first = min(firsts, key=lambda f: f.stream_seq or 1 << 62) if firsts else None
    return VerifyReport(
        intact=first is None,
        runs=len(ordered),
        intact_runs=sum(v.intact for v in ordered),
        signals=sum(v.signals for v in ordered),
        stream_seq=stream_seq,
        first=first,
        log_findings=log_findings,
        verdicts=ordered,
        trusted_keys=sorted(trusted),
    )
