"""What happened: the signal envelope, its kinds, canonical codec, hash chain, digests.

This package is pure: it does no I/O, reads no clock and imports nothing else of sisas
but :mod:`sisas.errors`.
"""

from sisas.signals.chain import ChainHead, ChainIssue, Draft, seal, verify_chain
from sisas.signals.codec import canonical, content_hash, decode_signal, encode_signal
from sisas.signals.digest import semantic_digest
from sisas.signals.envelope import GENESIS, Signal, signal_id
from sisas.signals.kinds import (
    BODY_TYPES,
    ERROR_KINDS,
    KINDS,
    Body,
    CircuitClosed,
    CircuitOpened,
    ContractChecked,
    ErrorInfo,
    ErrorKind,
    InvariantChecked,
    PhaseCompleted,
    PhaseFailed,
    PhaseRetryScheduled,
    PhaseScheduled,
    PhaseSkipped,
    PhaseStarted,
    PhaseTimedOut,
    Resources,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRequested,
    RunStarted,
    Scalar,
    Violation,
)
from sisas.signals.names import check_name, input_subject, log_subject, run_filter
from sisas.signals.records import CorruptMessage, LogGap, LogRecord, StoredSignal, decode_record

__all__ = [
    "BODY_TYPES",
    "ERROR_KINDS",
    "GENESIS",
    "KINDS",
    "Body",
    "ChainHead",
    "ChainIssue",
    "CircuitClosed",
    "CircuitOpened",
    "ContractChecked",
    "CorruptMessage",
    "Draft",
    "ErrorInfo",
    "ErrorKind",
    "InvariantChecked",
    "LogGap",
    "LogRecord",
    "PhaseCompleted",
    "PhaseFailed",
    "PhaseRetryScheduled",
    "PhaseScheduled",
    "PhaseSkipped",
    "PhaseStarted",
    "PhaseTimedOut",
    "Resources",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunRequested",
    "RunStarted",
    "Scalar",
    "Signal",
    "StoredSignal",
    "Violation",
    "canonical",
    "check_name",
    "content_hash",
    "decode_record",
    "decode_signal",
    "encode_signal",
    "input_subject",
    "log_subject",
    "run_filter",
    "seal",
    "semantic_digest",
    "signal_id",
    "verify_chain",
]
