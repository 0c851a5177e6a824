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
it recomputes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from sisas import __version__
from sisas.errors import UsageError
from sisas.replay.verdicts import RerunVerdict, RunVerdict
from sisas.replay.verify import LogVerifier, report
from sisas.signals.codec import encode_signal
from sisas.signals.digest import bytes_digest
from sisas.signals.envelope import Signal
from sisas.signals.kinds import PhaseFailed, RunRequested
from sisas.signals.names import log_subject
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
    """An artifact the run read or wrote, and whether the bundle holds it."""

    role: str
    size: int = 0
    included: bool = False
    reason: str = ""


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
    subject: str
    signal: msgspec.Raw = msgspec.Raw(b"")
    corrupt: str = ""


class BundleVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """The offline check of a bundle: intact only if every part holds."""

    intact: bool
    run_id: str
    verify: RunVerdict | None
    files: list[str] = []
    """Problems with the files: missing, changed since export, not in the index."""
    manifest: list[str] = []
    """Where the manifest disagrees with the state refolded from the signals."""
    artifacts: list[str] = []
    """Artifacts whose bytes do not match their digest, or that the run never used."""
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
    s = r.signal
    return log_subject(s.pipeline, s.run_id, s.phase, s.kind)


def write_bundle(
    out: Path,
    *,
    records: Sequence[StoredSignal | CorruptMessage],
    manifest: Mapping[str, Any],
    claims: Claims,
    artifacts: Mapping[str, tuple[str, bytes | None, str]],
    html: str,
) -> BundleIndex:
    """Write the bundle into ``out`` (created; must be empty if it exists).

    ``artifacts`` maps a digest to (role, bytes or None when left out, why left out).
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
    entries: dict[str, ArtifactEntry] = {}
    for digest, (role, data, reason) in sorted(artifacts.items()):
        if data is None:
            entries[digest] = ArtifactEntry(role=role, reason=reason)
            continue
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
            out.append(decode_record(line.stream_seq, line.subject, bytes(line.signal)))
    return out


def _load_json(path: Path, problems: list[str]) -> Any:
    try:
        return msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        problems.append(f"{path.name}: {exc}")
        return None


def _check_files(folder: Path, index: BundleIndex) -> list[str]:
    problems = []
    for name, digest in index.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is listed in index.json but missing")
        elif _sha(path.read_bytes()) != digest:
            problems.append(f"{name} changed since the bundle was exported (its sha256 differs)")
    listed = set(index.files) | {"index.json"}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in listed:
            problems.append(f"{rel} is not listed in index.json")
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
    roles: dict[str, str] = {}
    for s in signals:
        body = s.body
        item = getattr(body, "item", None)
        where = s.phase + ("" if item is None else f"[{item}]")
        if isinstance(body, RunRequested) and body.input_digest:
            roles.setdefault(body.input_digest, "run input")
        for name in ("artifact", "reused_artifact"):
            if getattr(body, name, ""):
                roles.setdefault(getattr(body, name), f"output of {where}")
        if isinstance(body, PhaseFailed) and body.quarantined_artifact:
            roles.setdefault(body.quarantined_artifact, f"quarantined output of {where}")
        for digest in getattr(body, "reused_items", []):
            roles.setdefault(digest, f"output of an item of {where}")
        for digest in getattr(body, "inputs", {}).values():
            roles.setdefault(digest, f"input of {where}")
        for digests in getattr(body, "gathered", {}).values():
            for digest in filter(None, digests):  # "" is a failed item of a partial fan-out
                roles.setdefault(digest, f"input of {where}")
    return roles


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
    files = _check_files(folder, index)
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
    used = run_artifacts(r.signal for r in records if isinstance(r, StoredSignal))
    artifact_problems = []
    checked = 0
    for digest, entry in index.artifacts.items():
        if digest not in used:
            artifact_problems.append(f"{digest} is not read or written by any signal of the run")
        if not entry.included:
            continue
        path = folder / "artifacts" / digest.removeprefix("sha256:")
        if path.is_file():
            checked += 1
            if bytes_digest(path.read_bytes()) != digest:
                artifact_problems.append(f"artifacts/{path.name} does not hash to its name")
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
    intact = bool(
        verdict is not None
        and verdict.intact
        and not files
        and not manifest_problems
        and not artifact_problems
        and not claims_problems
    )
    return BundleVerdict(
        intact=intact,
        run_id=index.run_id,
        verify=verdict,
        files=files,
        manifest=manifest_problems,
        artifacts=artifact_problems,
        claims=claims_problems,
        artifacts_checked=checked,
    )


def bundle_fetch(folder: Path) -> Callable[[str], Awaitable[bytes | None]]:
    """An artifact fetcher reading the bundle's ``artifacts/`` (for an offline rerun)."""

    async def fetch(digest: str) -> bytes | None:
        path = folder / "artifacts" / digest.removeprefix("sha256:")
        if not path.is_file():
            return None
        data = path.read_bytes()
        return data if bytes_digest(data) == digest else None

    return fetch
