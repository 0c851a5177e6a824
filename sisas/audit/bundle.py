"""Audit bundles: a run's evidence in a folder an auditor can check with no server.

Layout (``docs/replay.md``)::

    index.json       format version, run, and the sha256 of every other file
    signals.jsonl    one stored message per line: {"stream_seq", "subject", "signal"},
                     "signal" holding the exact bytes stored in the log
    manifest.json    the run manifest (``sisas manifest``)
    verdict.json     the verdicts when exported: verification, and rerun if asked
    artifacts/<hex>  the run's input and outputs, by digest, up to a size limit
    report.html      the readable report (timeline, checks, digests, verdict)

:func:`verify_bundle` re-derives everything from ``signals.jsonl`` alone: the chain,
placement and signatures, the refolded state against the manifest, every file against
the index, every artifact against its digest, and the exported verdict against the one
it recomputes. It keeps two answers apart: whether the log is intact (the chain and the
files that describe it) and whether the evidence is complete (every artifact the run
read or wrote is in the bundle and hashes to its digest, or was left out on purpose).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from sisas import __version__
from sisas.errors import UsageError
from sisas.replay.evidence import artifact_uses, located
from sisas.replay.verdicts import ArtifactProblem, RerunVerdict, RunVerdict
from sisas.replay.verify import LogVerifier, report
from sisas.signals.codec import encode_signal
from sisas.signals.digest import bytes_digest
from sisas.signals.envelope import Signal
from sisas.signals.names import commit_subject, log_subject
from sisas.signals.records import CorruptMessage, StoredSignal, decode_record

__all__ = [
    "BUNDLE_VERSION",
    "ArtifactEntry",
    "BundleIndex",
    "BundleVerdict",
    "Claims",
    "bundle_fetch",
    "read_records",
    "run_artifacts",
    "verify_bundle",
    "write_bundle",
]

BUNDLE_VERSION = 1


class ArtifactEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An artifact the run read or wrote, and whether the bundle holds it.

    ``problem`` is ``missing`` or ``damaged`` when the store could not give its bytes at
    export (the evidence was incomplete then); None when it was included, or left out
    on purpose (``reason``: over the size limit)."""

    role: str
    size: int = 0
    included: bool = False
    reason: str = ""
    problem: Literal["missing", "damaged"] | None = None


class BundleIndex(msgspec.Struct, frozen=True, kw_only=True):
    bundle_version: int
    run_id: str
    pipeline: str
    created_with: str
    files: dict[str, str]
    artifacts: dict[str, ArtifactEntry] = {}


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """What the exporter found, kept in ``verdict.json`` and re-checked by verify."""

    verify: RunVerdict
    rerun: RerunVerdict | None = None


class _Line(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    stream_seq: int
    index: int = 0
    subject: str
    signal: msgspec.Raw = msgspec.Raw(b"")
    corrupt: str = ""


class BundleVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """The offline check of a bundle: intact only if the log is intact and the evidence
    complete."""

    intact: bool
    run_id: str
    verify: RunVerdict | None
    log_intact: bool = False
    """The chain verifies, and the files describing it agree with it and the index."""
    evidence_complete: bool = False
    """Every artifact the run read or wrote is in the bundle and hashes to its digest
    (or was left out on purpose, listed in ``artifacts_left_out``)."""
    files: list[str] = []
    """Problems with the files: missing, changed since export, not in the index."""
    manifest: list[str] = []
    """Where the manifest disagrees with the state refolded from the signals."""
    artifacts: list[str] = []
    """Each artifact problem in one line (``artifact_problems`` as text)."""
    artifact_problems: list[ArtifactProblem] = []
    """Artifacts missing or damaged, in the bundle or already in the store at export."""
    artifacts_left_out: list[str] = []
    """Artifacts left out at export on purpose (over ``--max-artifact-bytes``), and why."""
    claims: list[str] = []
    """Where the exported verdict disagrees with the recomputed one."""
    artifacts_checked: int = 0


_ENC = msgspec.json.Encoder(order="sorted")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _signals_jsonl(records: Sequence[StoredSignal | CorruptMessage]) -> bytes:
    lines = []
    for r in records:
        if isinstance(r, StoredSignal):
            line = msgspec.json.encode(
                _Line(
                    stream_seq=r.stream_seq,
                    index=r.index,
                    subject=_subject(r),
                    signal=msgspec.Raw(encode_signal(r.signal)),
                )
            )
        else:
            line = msgspec.json.encode(
                _Line(stream_seq=r.stream_seq, subject=r.subject, corrupt=r.reason)
            )
        lines.append(line)
    return b"\n".join(lines) + b"\n"


def _subject(r: StoredSignal) -> str:
    """The subject of the message ``r`` is stored in: its run's commit subject, or (log
    format 1) its own kind's subject."""
    s = r.signal
    if r.commit:
        return commit_subject(s.pipeline, s.run_id)
    return log_subject(s.pipeline, s.run_id, s.phase, s.kind)


def write_bundle(
    out: Path,
    *,
    records: Sequence[StoredSignal | CorruptMessage],
    manifest: Mapping[str, Any],
    claims: Claims,
    artifacts: Mapping[str, tuple[str, bytes | None, str]],
    html: str,
    problems: Iterable[ArtifactProblem] = (),
) -> BundleIndex:
    """Write the bundle into ``out`` (created; must be empty if it exists).

    ``artifacts`` maps a digest to (role, bytes or None when left out, why left out);
    ``problems`` are the artifacts the store could not give (missing or damaged), kept in
    the index as such so that the bundle's evidence is known to be incomplete.
    """
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: choose a new folder for the bundle")
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        "signals.jsonl": _signals_jsonl(records),
        "manifest.json": _ENC.encode(manifest),
        "verdict.json": _ENC.encode(claims),
        "report.html": html.encode(),
    }
    unreadable = {p.digest: p for p in problems}
    entries: dict[str, ArtifactEntry] = {}
    for digest, (role, data, reason) in sorted(artifacts.items()):
        if digest in unreadable:
            p = unreadable[digest]
            entries[digest] = ArtifactEntry(role=role, reason=p.detail, problem=p.problem)
        elif data is None:
            entries[digest] = ArtifactEntry(role=role, reason=reason)
        else:
            entries[digest] = ArtifactEntry(role=role, size=len(data), included=True)
            files[f"artifacts/{digest.removeprefix('sha256:')}"] = data
    for name, data in files.items():
        (out / name).write_bytes(data)
    index = BundleIndex(
        bundle_version=BUNDLE_VERSION,
        run_id=claims.verify.run_id,
        pipeline=claims.verify.pipeline,
        created_with=f"sisas {__version__}",
        files={name: _sha(data) for name, data in sorted(files.items())},
        artifacts=entries,
    )
    (out / "index.json").write_bytes(msgspec.json.format(_ENC.encode(index)))
    return index


def read_records(path: Path) -> list[StoredSignal | CorruptMessage]:
    """The stored messages in a bundle's ``signals.jsonl``, decoded and checked."""
    out: list[StoredSignal | CorruptMessage] = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = msgspec.json.decode(raw, type=_Line)
        except msgspec.DecodeError as exc:
            out.append(
                CorruptMessage(
                    stream_seq=0,
                    subject="",
                    reason=f"line {n} of {path.name}: {exc}",
                    size=len(raw),
                )
            )
            continue
        if not line.signal:
            reason = line.corrupt or "no signal"
            out.append(
                CorruptMessage(stream_seq=line.stream_seq, subject=line.subject, reason=reason)
            )
        else:
            rec = decode_record(line.stream_seq, line.subject, bytes(line.signal))
            if isinstance(rec, StoredSignal) and (line.index or line.subject.endswith(".c")):
                rec = msgspec.structs.replace(
                    rec, index=line.index, commit=line.subject.endswith(".c")
                )
            out.append(rec)
    return out


def _load_json(path: Path, problems: list[str]) -> Any:
    try:
        return msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        problems.append(f"{path.name}: {exc}")
        return None


def _check_files(folder: Path, index: BundleIndex) -> list[tuple[str, str]]:
    """(file name, problem) for each file that is missing, changed or not indexed."""
    problems = []
    for name, digest in index.files.items():
        path = folder / name
        if not path.is_file():
            problems.append((name, f"{name} is listed in index.json but missing"))
        elif _sha(path.read_bytes()) != digest:
            problems.append(
                (name, f"{name} changed since the bundle was exported (its sha256 differs)")
            )
    listed = set(index.files) | {"index.json"}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in listed:
            problems.append((rel, f"{rel} is not listed in index.json"))
    return problems


def _check_manifest(manifest: Any, verdict: RunVerdict) -> list[str]:
    if not isinstance(manifest, dict):
        return ["manifest.json is not a JSON object"]
    want = {
        "run_id": verdict.run_id,
        "pipeline": verdict.pipeline,
        "status": verdict.status,
        "fingerprint": verdict.fingerprint or None,
    }
    problems = [
        f"manifest {k} is {manifest.get(k)!r}, the signals give {v!r}"
        for k, v in want.items()
        if manifest.get(k) != v
    ]
    chain = manifest.get("chain") or {}
    if chain.get("head") != verdict.head_hash:
        problems.append("manifest chain head differs from the last signal's hash")
    if chain.get("signals") != verdict.signals:
        problems.append(
            f"manifest counts {chain.get('signals')} signals, the bundle holds {verdict.signals}"
        )
    return problems


def run_artifacts(signals: Iterable[Signal]) -> dict[str, str]:
    """Every artifact a run read or wrote, by digest, with its role (where first seen)."""
    return {digest: uses[0] for digest, uses in artifact_uses(signals).items()}


def _name(digest: str) -> str:
    return f"artifacts/{digest.removeprefix('sha256:')}"


def _read_artifact(folder: Path, digest: str) -> bytes | ArtifactProblem:
    """The bytes of ``artifacts/<hex>`` when they hash to ``digest``, else the problem."""
    path = folder / _name(digest)
    if not path.is_file():
        return ArtifactProblem(
            digest=digest, problem="missing", detail=f"{_name(digest)} is not in the bundle"
        )
    data = path.read_bytes()
    actual = bytes_digest(data)
    if actual != digest:
        why = f"{_name(digest)} does not hash to its name (its bytes hash to {actual})"
        return ArtifactProblem(digest=digest, problem="damaged", detail=why)
    return data


def _not_held(digest: str, entry: ArtifactEntry | None) -> ArtifactProblem | None:
    """Why the bundle does not hold an artifact it should, by its index entry: None when
    it was included or left out on purpose (over the size limit)."""
    if entry is None:
        why = "index.json does not list it, though the run used it"
        return ArtifactProblem(digest=digest, problem="missing", detail=why)
    if entry.problem is not None:
        why = f"{entry.problem} in the store when the bundle was exported: {entry.reason}"
        return ArtifactProblem(digest=digest, problem=entry.problem, detail=why)
    return None


def verify_bundle(folder: Path, *, trusted: frozenset[str] = frozenset()) -> BundleVerdict:
    """Check a bundle offline (see the module docstring); never touches a server."""
    if not (folder / "index.json").is_file():
        raise UsageError(f"{folder} holds no index.json: is it a bundle from `sisas audit`?")
    problems: list[str] = []
    raw_index = _load_json(folder / "index.json", problems)
    try:
        index = msgspec.convert(raw_index, BundleIndex)
    except msgspec.ValidationError as exc:
        raise UsageError(f"{folder}/index.json is not a bundle index: {exc}") from None
    if index.bundle_version != BUNDLE_VERSION:
        raise UsageError(
            f"bundle format {index.bundle_version} is not {BUNDLE_VERSION}: "
            "verify it with the sisas version that wrote it "
            f"({index.created_with})"
        )
    file_problems = _check_files(folder, index)
    files: list[str] = []  # problems of the log's files beyond those of _check_files
    signals_path = folder / "signals.jsonl"
    records = read_records(signals_path) if signals_path.is_file() else []
    verifier = LogVerifier(trusted=trusted, only=index.run_id).extend(records)
    stray = [r for r in records if isinstance(r, StoredSignal) and r.signal.run_id != index.run_id]
    result = report(verifier)
    verdict = result.verdicts[0] if result.verdicts else None
    if stray:
        files.append(f"signals.jsonl holds {len(stray)} signals of other runs")
    files.extend(f"signals.jsonl: {f.message}" for f in result.log_findings)
    manifest_problems = (
        _check_manifest(_load_json(folder / "manifest.json", problems), verdict)
        if verdict is not None
        else ["signals.jsonl holds no signal of the run"]
    )
    uses = artifact_uses(r.signal for r in records if isinstance(r, StoredSignal))
    evidence: list[ArtifactProblem] = []
    left_out: list[str] = []
    checked = 0
    for digest in [*uses, *(d for d in index.artifacts if d not in uses)]:  # log order
        entry = index.artifacts.get(digest)
        if digest not in uses:
            files.append(f"{digest} is listed in index.json but no signal of the run uses it")
            continue
        problem = _not_held(digest, entry)
        if problem is None and entry is not None and not entry.included:
            left_out.append(f"{digest} ({'; '.join(uses[digest])}): {entry.reason}")
            continue
        if problem is None:
            found = _read_artifact(folder, digest)
            checked += (folder / _name(digest)).is_file()
            problem = found if isinstance(found, ArtifactProblem) else None
        if problem is not None:
            evidence.append(located(digest, problem.problem, problem.detail, uses))
    claims_problems = []
    raw_claims = _load_json(folder / "verdict.json", problems)
    try:
        claims = msgspec.convert(raw_claims, Claims)
    except msgspec.ValidationError as exc:
        claims_problems.append(f"verdict.json is not a verdict: {exc}")
    else:
        if verdict is not None and claims.verify.intact != verdict.intact:
            claims_problems.append(
                f"verdict.json says intact={claims.verify.intact}, recomputed {verdict.intact}"
            )
        if verdict is not None and claims.verify.state_digest != verdict.state_digest:
            claims_problems.append("verdict.json's state digest differs from the refold")
    files.extend(problems)
    # A changed or missing artifact file is the evidence's problem (named there), not the log's.
    damaged = {_name(p.digest) for p in evidence}
    log_files = [m for n, m in file_problems if n not in damaged] + files
    log_intact = bool(
        verdict is not None
        and verdict.intact
        and not log_files
        and not manifest_problems
        and not claims_problems
    )
    return BundleVerdict(
        intact=log_intact and not evidence,
        run_id=index.run_id,
        verify=verdict,
        log_intact=log_intact,
        evidence_complete=not evidence,
        files=[m for _, m in file_problems] + files,
        manifest=manifest_problems,
        artifacts=[p.describe() for p in evidence],
        artifact_problems=evidence,
        artifacts_left_out=left_out,
        claims=claims_problems,
        artifacts_checked=checked,
    )


def bundle_fetch(folder: Path) -> Callable[[str], Awaitable[bytes | ArtifactProblem]]:
    """An artifact fetcher reading the bundle's ``artifacts/`` (for an offline rerun): the
    bytes when they hash to their name, else what is wrong, with why the bundle lacks
    them when its index says (left out, or missing or damaged in the store at export)."""
    index: BundleIndex | None
    try:
        index = msgspec.json.decode((folder / "index.json").read_bytes(), type=BundleIndex)
    except (OSError, msgspec.DecodeError):
        index = None  # a bare folder of artifacts: each is looked for as a file

    async def fetch(digest: str) -> bytes | ArtifactProblem:
        found = _read_artifact(folder, digest)
        entry = index.artifacts.get(digest) if index is not None else None
        if isinstance(found, bytes) or entry is None or entry.included:
            return found
        why = f"left out when the bundle was exported: {entry.reason}"
        return _not_held(digest, entry) or ArtifactProblem(
            digest=digest, problem="missing", detail=why
        )

    return fetch
