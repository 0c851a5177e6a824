"""The log format 2 (commits) through verify: golden logs of good and broken commits.

A commit is the signals of one decision in one log message. Verify reads it whole or
not at all: a reordered commit or one that spans two runs is one corrupt message named
at its stream sequence; a correctly built commit appended by an outsider is caught by
the placement rules like any forged signal.
"""

from __future__ import annotations

import msgspec
import pytest

from sisas.replay.verify import LogVerifier, report
from sisas.signals.records import CorruptMessage, StoredSignal, decode_records
from tests.golden import make
from tests.runs import GOLDEN


class _Line(msgspec.Struct):
    stream_seq: int
    subject: str
    message: msgspec.Raw


def read_commits(name: str) -> list[StoredSignal | CorruptMessage]:
    out: list[StoredSignal | CorruptMessage] = []
    for raw in (GOLDEN / name).read_bytes().splitlines():
        line = msgspec.json.decode(raw, type=_Line)
        out += decode_records(line.stream_seq, line.subject, bytes(line.message))
    return out


def test_the_commit_golden_logs_are_what_the_code_makes_today() -> None:
    for name, data in make.commit_logs().items():
        assert (GOLDEN / name).read_bytes() == data, (
            f"{name} drifted: run `python -m tests.golden.make` and commit the diff if the "
            "change is deliberate"
        )


def test_the_intact_commits_hold_the_same_chain_as_the_signal_per_message_log() -> None:
    records = read_commits("commits_intact.jsonl")
    signals = [r.signal for r in records if isinstance(r, StoredSignal)]
    assert signals == make.intact_run()
    per_message = [r for r in records if isinstance(r, StoredSignal) and r.last_in_message]
    assert len(per_message) == -(-len(signals) // make.COMMIT_SIZE)
    assert {r.stream_seq for r in records} == set(range(1, len(per_message) + 1))


# file, intact, (problem, stream seq, kind) of the first finding
PINNED = [
    ("commits_intact.jsonl", True, None),
    ("commits_reordered.jsonl", False, ("corrupt", 5, "")),
    ("commits_spanning.jsonl", False, ("corrupt", 5, "")),
    ("commits_forged.jsonl", False, ("out_of_place", 53, "phase_completed")),
]


@pytest.mark.parametrize(("name", "intact", "first"), PINNED)
def test_each_commit_golden_log_gets_its_pinned_verdict(
    name: str, intact: bool, first: tuple[str, int, str] | None
) -> None:
    result = report(LogVerifier().extend(read_commits(name)))
    assert result.intact is intact
    if first is None:
        assert result.first is None
    else:
        assert result.first is not None
        got = (result.first.problem, result.first.stream_seq, result.first.kind)
        assert got == first, result.first


def test_a_broken_commit_says_why_and_where() -> None:
    reordered = [
        r for r in read_commits("commits_reordered.jsonl") if isinstance(r, CorruptMessage)
    ]
    spanning = [r for r in read_commits("commits_spanning.jsonl") if isinstance(r, CorruptMessage)]
    assert [(r.stream_seq, "not consecutive" in r.reason) for r in reordered] == [(5, True)]
    assert [(r.stream_seq, "spans two runs" in r.reason) for r in spanning] == [(5, True)]
