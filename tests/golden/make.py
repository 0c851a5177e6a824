"""The golden logs: how each was made, so a test can make them again and compare.

``python -m tests.golden.make`` rewrites the files (the nondeterministic bundle only
with ``--nondeterministic``, since by design it never comes out the same twice).
Each log is a bundle-format ``signals.jsonl``: one stored message per line. The
``commits_*.jsonl`` logs are as the log stream holds them since log format 2: one commit
(the signals of one decision) per line, ``{"stream_seq", "subject", "message"}``, the
message's bytes as stored.
"""

from __future__ import annotations

import itertools
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nkeys

from examples.clustering import pipeline as clustering
from sisas.handlers.local import LocalRun
from sisas.signals import ChainHead, Draft, PhaseCompleted, RunCancelled, RunRequested, Signal
from sisas.signals.codec import encode_signal
from sisas.signals.names import commit_subject, log_subject
from sisas.signals.records import COMMIT_HEAD, encode_commit
from sisas.signals.signing import Signer

HERE = Path(__file__).parent
AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
POINTS = (HERE.parent.parent / "examples" / "data" / "points.json").read_bytes()
SIGNING_SEED = bytes(nkeys.encode_seed(b"\x07" * 32, nkeys.PREFIX_BYTE_USER))
"""A test key, public on purpose: never use it for anything real."""
OUTSIDER_SEED = bytes(nkeys.encode_seed(b"\x09" * 32, nkeys.PREFIX_BYTE_USER))


def _clock() -> object:
    ticks = itertools.count()
    return lambda: next(ticks) * 0.001


def intact_run() -> list[Signal]:
    run = LocalRun(clustering, "golden-1", at=AT, clock=_clock())  # type: ignore[arg-type]
    run.start(POINTS, seed=7, config={"clean.flaky": True})
    run.run()
    return run.signals


def line(stream_seq: int, wire: bytes, signal: Signal | None = None) -> bytes:
    s = signal or msgspec.json.decode(wire, type=Signal)
    subject = log_subject(s.pipeline, s.run_id, s.phase, s.kind)
    head = json.dumps({"stream_seq": stream_seq, "subject": subject}, separators=(",", ":"))
    return head[:-1].encode() + b',"signal":' + wire + b"}"


def jsonl(wires: list[bytes]) -> bytes:
    return b"".join(line(i, w) + b"\n" for i, w in enumerate(wires, 1))


def forge_after(signals: list[Signal], body: object, *, phase: str = "") -> Signal:
    """A signal an outside client could write: correctly chained after ``signals``."""
    head = ChainHead.after(signals[-1])
    forged, _ = head.extend([Draft(body=body, at=AT, phase=phase)])  # type: ignore[arg-type]
    return forged[0]


def logs() -> dict[str, bytes]:
    signals = intact_run()
    wires = [encode_signal(s) for s in signals]
    # One byte of seq 9 (phase_scheduled): a hex digit of its input digest; valid JSON.
    changed = bytearray(wires[8])
    digit = changed.index(b"sha256:") + 10
    changed[digit] = ord("0") if changed[digit] != ord("0") else ord("1")
    signer = Signer(SIGNING_SEED)
    signed = [signer.sign(s) for s in signals]
    outsider = Signer(OUTSIDER_SEED)
    cancel = forge_after(signals[:-1], RunCancelled(reason="forged", requested_by="mallory"))
    return {
        "intact.jsonl": jsonl(wires),
        "changed_byte.jsonl": jsonl([*wires[:8], bytes(changed), *wires[9:]]),
        "removed.jsonl": jsonl([*wires[:11], *wires[12:]]),
        "reordered.jsonl": jsonl([*wires[:11], wires[12], wires[11], *wires[13:]]),
        "forged_append.jsonl": jsonl(
            [*wires, encode_signal(forge_after(signals, PhaseCompleted(output_digest="")))]
        ),
        "signed.jsonl": jsonl([encode_signal(s) for s in signed]),
        "signed_forged.jsonl": jsonl(
            [*(encode_signal(s) for s in signed[:-1]), encode_signal(outsider.sign(cancel))]
        ),
    }


COMMIT_SIZE = 3
"""Signals per commit in the commit golden logs."""


def commit_line(stream_seq: int, subject: str, data: bytes) -> bytes:
    head = json.dumps({"stream_seq": stream_seq, "subject": subject}, separators=(",", ":"))
    return head[:-1].encode() + b',"message":' + data + b"}"


def commit_logs() -> dict[str, bytes]:
    signals = intact_run()
    subject = commit_subject(signals[0].pipeline, signals[0].run_id)
    chunks = [signals[i : i + COMMIT_SIZE] for i in range(0, len(signals), COMMIT_SIZE)]
    good = [encode_commit(c) for c in chunks]
    # commit 5 with its first two signals swapped: bytes a writer could store
    a, b, *rest = chunks[4]
    swapped = COMMIT_HEAD + b",".join(encode_signal(x) for x in [b, a, *rest]) + b"]}"
    # commit 5 carrying a signal of another run at its end
    other, _ = ChainHead(pipeline="clustering", run_id="golden-2").extend(
        [Draft(body=RunRequested(seed=1), at=AT)]
    )
    spanning = COMMIT_HEAD + b",".join(encode_signal(x) for x in [*chunks[4], other[0]]) + b"]}"
    forged = encode_commit([forge_after(signals, PhaseCompleted(output_digest=""))])

    def log(messages: list[bytes]) -> bytes:
        return b"".join(commit_line(i, subject, m) + b"\n" for i, m in enumerate(messages, 1))

    return {
        "commits_intact.jsonl": log(good),
        "commits_reordered.jsonl": log([*good[:4], swapped, *good[5:]]),
        "commits_spanning.jsonl": log([*good[:4], spanning, *good[5:]]),
        "commits_forged.jsonl": log([*good, forged]),
    }


def write_nondeterministic(folder: Path) -> None:
    from sisas.signals.digest import bytes_digest
    from tests.golden.clocky import pipeline as clocky

    run = LocalRun(clocky, "golden-clocky", at=AT, clock=_clock())  # type: ignore[arg-type]
    run.start(b'{"values": [1.0, 2.0, 3.5]}', seed=11)
    run.run()
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    for digest, data in run.artifacts.items():
        assert bytes_digest(data) == digest
        (folder / "artifacts" / digest.removeprefix("sha256:")).write_bytes(data)
    (folder / "signals.jsonl").write_bytes(jsonl([encode_signal(s) for s in run.signals]))


if __name__ == "__main__":
    for name, data in {**logs(), **commit_logs()}.items():
        (HERE / name).write_bytes(data)
    if "--nondeterministic" in sys.argv:
        write_nondeterministic(HERE / "nondeterministic")
    print(f"wrote the golden logs into {HERE}")
