"""Rows of the projection tables, from a signal and the run state ``evolve`` gave.

Pure: the same signals give the same rows whatever the batch boundaries, so the state
digest of a live projection and of a rebuild agree. Tuples follow the column order of
:mod:`sisas.projections.schema`. A run's rows in ``runs`` and ``phases`` are read off
what the projection shows of it (:attr:`Tracked.view`), its chain (signals, head,
stream sequences) off every signal that extends it.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import TypeAlias

import msgspec

from sisas.handlers.state import RunState
from sisas.handlers.tables import dec_hook, enc_hook
from sisas.signals.envelope import Signal
from sisas.signals.kinds import (
    ContractChecked,
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    PhaseTimedOut,
)
from sisas.signals.records import CorruptMessage, LogGap

__all__ = [
    "Row",
    "Tamper",
    "Tracked",
    "check_row",
    "decode_screen",
    "decode_state",
    "encode_screen",
    "encode_state",
    "metric_row",
    "out_of_range",
    "phase_rows",
    "rejected_row",
    "run_row",
    "signal_row",
]

Row: TypeAlias = tuple[object, ...]

_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_INT32_FIELDS = ("item", "items", "item_count", "next_attempt")
"""Body fields stored in INTEGER columns (directly, or through the run's state)."""


@functools.cache
def _bounded(body_type: type) -> tuple[tuple[str, range], ...]:
    """The body fields of ``body_type`` stored in INTEGER or BIGINT columns."""
    fields = getattr(body_type, "__struct_fields__", ())
    out = tuple((name, _INT32) for name in _INT32_FIELDS if name in fields)
    return out + ((("seed", _INT64),) if "seed" in fields else ())


def out_of_range(s: Signal) -> str | None:
    """Why ``s`` cannot be stored (a number past its column's type), or None.

    The orchestrator never writes such numbers; a signal appended by someone else may,
    and it must become a rejected row rather than a batch that can never be written.
    """
    if _storable(s):
        return None  # every signal the orchestrator writes: nothing more to say
    body = s.body
    numbers: list[tuple[str, object, range]] = [
        ("seq", s.seq, _INT32),
        ("attempt", s.attempt, _INT32),
    ]
    numbers += [(name, getattr(body, name), valid) for name, valid in _bounded(type(body))]
    resources = getattr(body, "resources", None)
    if resources is not None:
        numbers.append(("peak_rss_bytes", getattr(resources, "peak_rss_bytes", None), _INT64))
    for name, value, valid in numbers:
        if isinstance(value, int) and value not in valid:
            return f"signal {s.id}: {name} {value} is out of range (at most {valid.stop - 1})"
    return None


def _storable(s: Signal) -> bool:
    """Whether every number of ``s`` fits its column (what :func:`out_of_range` checks,
    without building its message)."""
    if s.seq not in _INT32 or s.attempt not in _INT32:
        return False
    body = s.body
    for name, valid in _bounded(type(body)):
        value = getattr(body, name)
        if isinstance(value, int) and value not in valid:
            return False
    resources = getattr(body, "resources", None)
    rss = getattr(resources, "peak_rss_bytes", None) if resources is not None else None
    return not isinstance(rss, int) or rss in _INT64


class Tamper(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The first signal of a run that ``sisas replay verify`` flags: the stream sequence
    it is stored at, the problem as verify names it, and what is wrong."""

    stream_seq: int
    problem: str
    message: str
    missing: tuple[int, int] | None = None
    """For a ``gap``: the run seqs missing; one of them stored later makes it
    ``reordered``, as verify says."""


class Tracked(msgspec.Struct, frozen=True, gc=False):
    """A run as the projector holds it: its folded state and where its signals lie.

    ``state`` folds every signal that extends the run's chain (the orchestrator's own
    fold, the one verify refolds); ``shown`` the same without the signals verify flags,
    kept only once one was flagged (None: the same as ``state``); ``tamper`` is the first
    flagged; ``signers`` the keys that signed the run's signals, in order (verify's
    signer check without ``--trust``).
    """

    state: RunState
    first_stream_seq: int
    last_stream_seq: int
    shown: RunState | None = None
    tamper: Tamper | None = None
    signers: tuple[str, ...] = ()

    @property
    def view(self) -> RunState:
        """What the projection shows of the run."""
        return self.state if self.shown is None else self.shown


class _Screen(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What ``run_states.screen`` holds besides the state: NULL for most runs."""

    shown: RunState | None = None
    tamper: Tamper | None = None
    signers: tuple[str, ...] = ()


_STATE_ENCODER = msgspec.json.Encoder(enc_hook=enc_hook)
_STATE_DECODER = msgspec.json.Decoder(RunState, dec_hook=dec_hook)
_SCREEN_DECODER = msgspec.json.Decoder(_Screen, dec_hook=dec_hook)
_DETAIL = msgspec.json.Encoder(order="sorted")


def encode_state(state: RunState) -> bytes:
    return _STATE_ENCODER.encode(state)


def decode_state(data: bytes) -> RunState:
    return _STATE_DECODER.decode(data)


def encode_screen(t: Tracked) -> bytes | None:
    """``t``'s shown state, tamper and signers, or None when it has none of them."""
    if t.shown is None and t.tamper is None and not t.signers:
        return None
    return _STATE_ENCODER.encode(_Screen(shown=t.shown, tamper=t.tamper, signers=t.signers))


def decode_screen(
    state: bytes, screen: bytes | None, first_stream_seq: int, last_stream_seq: int
) -> Tracked:
    """The run a ``run_states`` row holds."""
    extra = _SCREEN_DECODER.decode(screen) if screen is not None else _Screen()
    return Tracked(
        decode_state(state),
        first_stream_seq,
        last_stream_seq,
        shown=extra.shown,
        tamper=extra.tamper,
        signers=extra.signers,
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


def run_row(t: Tracked) -> Row:
    """The ``runs`` row: what is shown of the run, and its chain as stored."""
    state, chain, tamper = t.view, t.state, t.tamper
    plan = state.plan
    done = sum(1 for p in state.phases.values() if p.status in ("completed", "skipped"))
    return (
        state.run_id,
        state.pipeline,
        plan.version if plan else "",
        state.status,
        state.seed,
        state.input_digest,
        plan.fingerprint if plan else "",
        state.fingerprint,
        state.failed_phase,
        state.error.kind if state.error else None,
        state.error.message if state.error else None,
        state.resume_of,
        state.batch_id,
        state.requested_at,
        state.started_at,
        state.ended_at,
        _seconds(state.requested_at, state.ended_at),
        len(state.phases),
        done,
        chain.head.seq,
        chain.head.hash,
        t.first_stream_seq,
        t.last_stream_seq,
        tamper is not None,
        tamper.stream_seq if tamper else None,
        tamper.problem if tamper else None,
        tamper.message if tamper else None,
        msgspec.json.encode(dict(sorted(state.tags.items()))).decode(),
    )


def phase_rows(state: RunState) -> list[Row]:
    rows: list[Row] = []
    for position, (name, p) in enumerate(state.phases.items()):
        ran = p.status not in ("pending", "skipped") or p.scheduled_at is not None
        rows.append(
            (
                state.run_id,
                name,
                position,
                state.pipeline,
                p.status,
                p.attempt + 1 if ran else 0,
                p.worker,
                p.items,
                p.item_count,
                p.duration,
                p.scheduled_at,
                p.ended_at,
                p.output_digest,
                p.artifact,
                p.error.kind if p.error else None,
                p.error.message if p.error else None,
                p.skip_reason,
                p.quarantined
                or next(
                    (i.quarantined for _, i in sorted(p.item_states.items()) if i.quarantined), ""
                ),
            )
        )
    return rows


def signal_row(stream_seq: int, s: Signal) -> Row:
    return (
        stream_seq,
        s.run_id,
        s.pipeline,
        s.seq,
        s.kind,
        s.phase,
        getattr(s.body, "item", None),
        s.attempt,
        s.at,
        s.hash,
    )


def check_row(stream_seq: int, s: Signal) -> Row | None:
    body = s.body
    if not isinstance(body, ContractChecked | InvariantChecked):
        return None
    common = (s.run_id, s.seq, stream_seq, s.pipeline, s.phase, body.item)
    if isinstance(body, ContractChecked):
        detail = _DETAIL.encode({"violations": body.violations}).decode()
        return (
            *common,
            s.attempt,
            "contract",
            body.contract,
            body.boundary,
            body.passed,
            detail,
            s.at,
        )
    if isinstance(body, InvariantChecked):
        detail = _DETAIL.encode(
            {
                "description": body.description,
                "observed": body.observed,
                "expected": body.expected,
            }
        ).decode()
    return (*common, s.attempt, "invariant", body.invariant, "", body.passed, detail, s.at)


def metric_row(stream_seq: int, s: Signal, state: RunState) -> Row | None:
    """One row per attempt a worker ran: how long it took and how it ended.

    The orchestrator's own verdicts (a fan-out gathered, a fan-out failed because an
    item did) are not attempts: their items carry the metrics.
    """
    body = s.body
    if not isinstance(body, PhaseCompleted | PhaseFailed | PhaseTimedOut):
        return None
    item = body.item
    if item is None and state.phase(s.phase).items is not None:
        return None
    if isinstance(body, PhaseCompleted):
        if not body.worker:
            return None
        outcome, duration, error = "completed", body.duration, None
        cpu, rss = body.resources.cpu_seconds, body.resources.peak_rss_bytes
    elif isinstance(body, PhaseFailed):
        if not body.worker:
            return None
        outcome, duration, error, cpu, rss = "failed", body.duration, body.error.kind, 0.0, 0
    else:
        outcome, duration, error, cpu, rss = "timed_out", body.timeout, "Timeout", 0.0, 0
    return (
        s.run_id,
        s.seq,
        stream_seq,
        s.pipeline,
        s.phase,
        item,
        s.attempt,
        outcome,
        duration,
        cpu,
        rss,
        error,
        s.at,
    )


def rejected_row(record: CorruptMessage | LogGap, index: int = 0) -> Row:
    """``index``: the rejected signal's place in its message (a commit holds several)."""
    if isinstance(record, LogGap):
        return (
            record.first,
            0,
            record.last,
            "",
            f"stream sequences {record.first}..{record.last} are missing from the log",
            0,
        )
    return (record.stream_seq, index, record.stream_seq, record.subject, record.reason, record.size)
