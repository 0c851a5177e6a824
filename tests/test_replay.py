"""Replay without a server: golden logs with pinned verdicts, placement rules on every
kind of legitimate run, rerun and its divergence report, signatures, offline bundles."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from examples.clustering import pipeline as clustering
from sisas.audit.bundle import Claims, bundle_fetch, read_records, verify_bundle, write_bundle
from sisas.client.verification import rerun_signals
from sisas.handlers.local import LocalRun
from sisas.handlers.state import fold
from sisas.pipeline import Context, Pipeline
from sisas.replay.fielddiff import field_diff
from sisas.replay.verdicts import FieldDiff
from sisas.replay.verify import LogVerifier, Projected, RunVerifier, report
from sisas.signals import codec
from sisas.signals.records import StoredSignal
from sisas.signals.signing import Signer, check_signature
from tests.golden import make
from tests.golden.clocky import pipeline as clocky
from tests.pipelines import small
from tests.runs import AT, GOLDEN, rerun_serial_and_parallel, run_of, verify_signals

TRUSTED = frozenset({Signer(make.SIGNING_SEED).public_key})

# file, trusted keys given?, intact, (problem, stream seq, run seq, kind) of the first finding
PINNED: list[tuple[str, bool, bool, tuple[str, int, int, str] | None]] = [
    ("intact.jsonl", False, True, None),
    ("changed_byte.jsonl", False, False, ("tampered", 9, 0, "")),
    ("removed.jsonl", False, False, ("gap", 12, 13, "phase_retry_scheduled")),
    ("reordered.jsonl", False, False, ("reordered", 12, 13, "phase_retry_scheduled")),
    ("forged_append.jsonl", False, False, ("out_of_place", 156, 156, "phase_completed")),
    ("signed.jsonl", True, True, None),
    ("signed_forged.jsonl", False, False, ("signer_changed", 155, 155, "run_cancelled")),
    ("signed_forged.jsonl", True, False, ("untrusted_signer", 155, 155, "run_cancelled")),
    ("intact.jsonl", True, False, ("unsigned", 1, 1, "run_requested")),
]


def verify_file(name: str, trusted: bool) -> Any:
    records = read_records(GOLDEN / name)
    return report(LogVerifier(trusted=TRUSTED if trusted else frozenset()).extend(records))


def test_golden_logs_are_what_the_code_makes_today() -> None:
    for name, data in make.logs().items():
        assert (GOLDEN / name).read_bytes() == data, (
            f"{name} drifted: the same run no longer gives the same bytes. If the change "
            "is deliberate, run `python -m tests.golden.make` and commit the diff"
        )


@pytest.mark.parametrize(("name", "trusted", "intact", "first"), PINNED)
def test_each_golden_log_gets_its_pinned_verdict(
    name: str, trusted: bool, intact: bool, first: tuple[str, int, int, str] | None
) -> None:
    result = verify_file(name, trusted)
    assert result.intact is intact
    got = result.first
    if first is None:
        assert got is None
    else:
        assert got is not None
        assert (got.problem, got.stream_seq, got.run_seq, got.kind) == first


def test_a_forgery_that_fits_every_rule_is_caught_only_by_a_signature() -> None:
    """The documented limit: a correctly chained, legal run_cancelled by an outsider."""
    signals = make.intact_run()
    from sisas.signals import RunCancelled

    forged = make.forge_after(signals[:-1], RunCancelled(reason="forged"))
    unsigned = [*signals[:-1], forged]
    assert verify_signals(unsigned).intact  # nothing in the chain or the rules can tell
    signer = Signer(make.SIGNING_SEED)
    signed = [signer.sign(s) for s in signals[:-1]] + [forged]
    result = verify_signals(signed)
    assert not result.intact and result.first is not None
    assert result.first.problem == "unsigned" and result.first.run_seq == len(signals)


@pytest.mark.parametrize(
    ("label", "run"),
    [
        ("fan-out with a retry", lambda: run_of(clustering)),
        ("invariant broken", lambda: run_of(small(broken=True))),
        ("non-fatal failure", lambda: run_of(small(fatal=False, broken=True))),
        ("phase disabled", lambda: run_of(small(), **{"optional.enabled": False})),
        ("contract violation at entry", lambda: run_of(clustering, data=b'{"name": ""}')),
    ],
)
def test_every_legitimate_run_verifies_with_no_finding(label: str, run: Any) -> None:
    result = verify_signals(run().signals)
    assert result.intact, (label, result.first)


def test_a_cancelled_run_and_later_reports_verify_clean() -> None:
    from sisas.signals.inputs import CancelRun

    run = LocalRun(clustering, "c1", at=AT, clock=time.perf_counter)
    run.start(make.POINTS, seed=3)
    run.work(run.pending_work()[0])
    run.send(CancelRun(id="c1:cancel", pipeline="clustering", run_id="c1", at=AT))
    assert run.state.status == "cancelled"
    assert verify_signals(run.signals).intact


def test_a_wrong_fingerprint_on_completion_is_found() -> None:
    signals = make.intact_run()
    last = signals[-1]
    from sisas.signals import ChainHead, Draft, RunCompleted

    body = msgspec.structs.replace(last.body, fingerprint="sha256:" + "1" * 64)  # type: ignore[type-var]
    forged, _ = ChainHead.after(signals[-2]).extend([Draft(body=body, at=last.at)])
    assert isinstance(body, RunCompleted)
    result = verify_signals([*signals[:-1], *forged])
    assert result.first is not None and result.first.problem == "bad_fingerprint"


def test_the_refold_is_compared_with_the_projection_field_by_field() -> None:
    signals = make.intact_run()
    verifier = RunVerifier("golden-1", "clustering")
    for i, s in enumerate(signals, 1):
        verifier.add(StoredSignal(stream_seq=i, signal=s))
    state = fold(signals)
    assert verifier.verdict(Projected(digest=verifier.verdict().state_digest)).projection == "equal"
    stale = msgspec.structs.replace(state, seed=99)
    differs = verifier.verdict(Projected(digest="x", state=stale))
    assert differs.projection == "differs" and not differs.intact
    assert differs.projection_diff[0] == FieldDiff(path="seed", recorded=99, new=7)
    missing = verifier.verdict(Projected(digest=None))
    assert missing.projection == "missing" and missing.findings[-1].problem == "projection_missing"


def test_field_diff_names_each_leaf_that_differs() -> None:
    a = {"clusters": [{"w": 0.5}, {"w": 0.5}], "n": 1, "tag": "x"}
    b = {"clusters": [{"w": 0.5}, {"w": 0.4}, {"w": 0.1}], "n": 1.0, "extra": True, "tag": "x"}
    assert field_diff(a, b, path="output") == [
        FieldDiff(path="output.clusters[1].w", recorded=0.5, new=0.4),
        FieldDiff(path="output.clusters.length", recorded=2, new=3),
        FieldDiff(path="output.n", recorded=1, new=1.0),
        FieldDiff(path="output.extra", recorded=None, new=True),
    ]


def test_a_signature_covers_the_hash_and_changes_no_link() -> None:
    signals = make.intact_run()
    signer = Signer(make.SIGNING_SEED)
    signed = [signer.sign(s) for s in signals]
    assert [s.hash for s in signed] == [s.hash for s in signals]
    assert signer.sign(signals[3]) == signed[3]  # deterministic: a retried append dedups
    wire = codec.encode_signal(signed[3])
    assert codec.decode_signal(wire) == signed[3]
    assert check_signature(signed[3], TRUSTED).status == "valid"
    other = Signer(make.OUTSIDER_SEED).sign(signals[3])
    stolen = msgspec.structs.replace(signals[4], sig=other.sig)  # a signature moved over
    assert check_signature(stolen).status == "invalid"


async def test_rerun_from_recorded_inputs_finds_the_clock_and_the_unseeded_generator() -> None:
    folder = GOLDEN / "nondeterministic"
    signals = [r.signal for r in read_records(folder / "signals.jsonl")]  # type: ignore[union-attr]
    verdict = await rerun_signals(signals, {"clocky": clocky}, bundle_fetch(folder))
    assert not verdict.deterministic
    assert verdict.fingerprint != verdict.recorded_fingerprint
    by_phase = {r.phase: r for r in verdict.phases}
    assert by_phase["load"].equal and by_phase["seeded"].equal
    assert not by_phase["stamp"].equal and not by_phase["noisy"].equal
    first = verdict.first_divergence
    assert first is not None and first.phase == "stamp"
    assert [d.path for d in first.diff] == ["output.at"]
    assert first.diff[0].recorded != first.diff[0].new


async def test_parallel_rerun_equals_serial_across_a_fan_out() -> None:
    run, serial, parallel = await rerun_serial_and_parallel(
        "examples/clustering.py", make.POINTS, seed=5, workers=3, **{"clean.flaky": True}
    )
    assert serial.deterministic and parallel.deterministic
    assert serial.fingerprint == parallel.fingerprint == run.state.fingerprint
    items = [r for r in parallel.phases if r.phase == "score"]
    assert len(items) == run.state.phase("score").items and len(items) > 10
    assert [r.item for r in items] == list(range(len(items)))


def _bundle(folder: Path) -> tuple[Any, LocalRun]:
    run = LocalRun(clustering, "b1", at=AT, clock=time.perf_counter)
    run.start(make.POINTS, seed=5)
    run.run()
    records = [StoredSignal(stream_seq=i, signal=s) for i, s in enumerate(run.signals, 1)]
    verdict = report(LogVerifier().extend(records)).verdicts[0]
    manifest = {
        "run_id": "b1",
        "pipeline": "clustering",
        "status": "completed",
        "fingerprint": run.state.fingerprint,
        "chain": {"head": run.state.head.hash, "signals": len(run.signals)},
    }
    artifacts = {d: ("artifact", data, "") for d, data in run.artifacts.items()}
    write_bundle(
        folder,
        records=records,
        manifest=manifest,
        claims=Claims(verify=verdict),
        artifacts=artifacts,
        html="<html></html>",
    )
    return verdict, run


def test_a_bundle_verifies_offline_and_any_change_to_it_is_found(tmp_path: Path) -> None:
    verdict, run = _bundle(tmp_path / "b")
    ok = verify_bundle(tmp_path / "b")
    assert ok.intact and ok.verify == verdict
    assert ok.artifacts_checked == len(run.artifacts)

    _bundle(tmp_path / "art")
    victim = next((tmp_path / "art" / "artifacts").iterdir())
    victim.write_bytes(victim.read_bytes() + b" ")
    changed = verify_bundle(tmp_path / "art")
    assert not changed.intact
    assert any("changed since" in p for p in changed.files)
    assert any("does not hash" in p for p in changed.artifacts)

    _bundle(tmp_path / "sig")
    path = tmp_path / "sig" / "signals.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:5] + lines[6:]))
    removed = verify_bundle(tmp_path / "sig")
    assert not removed.intact and removed.verify is not None
    assert removed.verify.findings[0].problem == "gap"
    assert any("signals.jsonl changed" in p for p in removed.files)
    assert any("counts" in p for p in removed.manifest)


def test_every_problem_verify_can_report_is_documented() -> None:
    from sisas.replay.verdicts import Problem

    page = (Path(__file__).parent.parent / "docs" / "replay.md").read_text()
    for problem in Problem.__args__:  # type: ignore[attr-defined]
        assert f"| `{problem}` |" in page, problem


def test_a_fan_out_over_something_not_a_list_fails_legitimately() -> None:
    pipe = Pipeline("notalist", version="1")

    @pipe.phase()
    def source(ctx: Context, input: object) -> int:
        return 3

    @pipe.phase(map_over="source")
    def each(ctx: Context, item: int) -> int:
        return item

    run = run_of(pipe, data=b"null")
    assert run.state.status == "failed" and run.state.failed_phase == "each"
    assert verify_signals(run.signals).intact
