"""Stream and bucket provisioning, and the config check run at every start.

``SISAS_LOG`` is the immutable log: ``deny_delete``, ``deny_purge``, no limits,
``discard: new``. JetStream cannot stop a later stream *update* that adds limits (which
silently deletes messages) or deletes the whole stream, so sisas verifies the config
at every start and refuses to run on drift, and refuses to create an empty log where
the data folder shows one existed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError, ServiceUnavailableError

from sisas.errors import BusError, StoreWithoutStream, StreamDrift
from sisas.signals.names import (
    ARTIFACT_BUCKET,
    BLOB_BUCKET,
    CIRCUIT_BUCKET,
    IN_PREFIX,
    INPUT_STREAM,
    LOG_PREFIX,
    LOG_STREAM,
    PIPELINE_BUCKET,
    WORK_PREFIX,
    WORK_STREAM,
)

log = logging.getLogger("sisas.bus")

__all__ = [
    "INLINE_MAX",
    "DUPLICATE_WINDOW",
    "ProvisionReport",
    "config_drift",
    "input_stream_config",
    "log_stream_config",
    "provision",
    "work_stream_config",
]

INLINE_MAX: Final = 512 * 1024
DUPLICATE_WINDOW: Final = 120.0
"""Seconds within which a re-sent Nats-Msg-Id is deduplicated by the server."""


def log_stream_config(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=LOG_STREAM,
        description="sisas signal log: immutable, hash-chained (do not add limits)",
        subjects=[f"{LOG_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        max_msg_size=-1,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
        allow_direct=True,
        allow_atomic=True,
    )


def input_stream_config(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=INPUT_STREAM,
        description="sisas inputs: run commands and worker reports, kept for audit",
        subjects=[f"{IN_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW,
        allow_direct=True,
    )


def work_stream_config(replicas: int) -> StreamConfig:
    return StreamConfig(
        name=WORK_STREAM,
        description="sisas work offered to workers (each taken once; the log is the record)",
        subjects=[f"{WORK_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW,
    )


def _limit(value: int | float | None) -> int | float:
    """Normalise "no limit" (None, 0 or -1 depending on the field) to -1."""
    return -1 if value is None or value in (0, -1) else value


def config_drift(actual: StreamConfig, required: StreamConfig) -> list[str]:
    """The differences that matter between a stream's config and the required one.

    Checks subjects, storage, retention, replicas, and for the log every setting that
    could lose or rewrite history. Returns human-readable lines, empty when it is fine.
    """
    out: list[str] = []

    def check(name: str, have: object, want: object) -> None:
        if have != want:
            out.append(f"{name} is {have!r}, sisas requires {want!r}")

    check("subjects", sorted(actual.subjects or []), sorted(required.subjects or []))
    check("storage", actual.storage, required.storage)
    check("retention", actual.retention, required.retention)
    check("replicas", actual.num_replicas or 1, required.num_replicas or 1)
    if required.deny_delete:  # the immutable log
        check("deny_delete", actual.deny_delete, True)
        check("deny_purge", actual.deny_purge, True)
        check("discard", actual.discard, DiscardPolicy.NEW)
        check("allow_rollup_hdrs", bool(actual.allow_rollup_hdrs), False)
        check("allow_msg_ttl", bool(actual.allow_msg_ttl), False)
        check("sealed", bool(actual.sealed), False)
        for limit in ("max_msgs", "max_bytes", "max_age", "max_msgs_per_subject"):
            check(limit, _limit(getattr(actual, limit)), -1)
    return out


@dataclass
class ProvisionReport:
    """What provisioning found and did."""

    created: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)


def _marker(home: Path, identity: str) -> Path:
    tag = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return home / f"log-{tag}.json"


def _store_has_log(store: Path | None) -> bool:
    return store is not None and (store / "jetstream" / "$G" / "streams" / LOG_STREAM).is_dir()


async def _ensure(
    js: JetStreamContext, required: StreamConfig, report: ProvisionReport, *, guard: str | None
) -> StreamInfo:
    name = required.name or ""
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        if guard:
            raise StoreWithoutStream(guard) from None
        info = await js.add_stream(required)
        report.created.append(name)
        return info
    problems = config_drift(info.config, required)
    if problems:
        raise StreamDrift(
            f"stream {name} has drifted: "
            + "; ".join(problems)
            + ". sisas refuses to run on it because history could be lost. Restore the "
            "config (e.g. `nats stream edit`), or point SISAS_NATS_URL / SISAS_HOME elsewhere"
        )
    report.verified.append(name)
    return info


async def provision(
    js: JetStreamContext,
    *,
    replicas: int,
    home: Path,
    identity: str,
    store: Path | None = None,
    patience: float = 30.0,
) -> ProvisionReport:
    """Create the streams and the artifact bucket if missing; verify them if present.

    ``identity`` names the server (``"embedded"`` or its URL): the data folder remembers
    which servers held a log, so a log that vanished is reported, never silently
    replaced. Idempotent. Timeouts and 503s (a cluster electing a leader) are retried
    for ``patience`` seconds. Raises :class:`StreamDrift`, :class:`StoreWithoutStream`,
    :class:`BusError`.
    """
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        try:
            return await _provision_once(
                js, replicas=replicas, home=home, identity=identity, store=store
            )
        except _Transient as exc:
            if time.monotonic() > deadline:
                raise BusError(
                    f"could not provision JetStream streams: the server kept answering "
                    f"{exc.__cause__ or 'timeout'} for {patience:.0f}s. A cluster electing a "
                    "leader answers within seconds; check that a majority of its nodes is up"
                ) from None
            log.info("provisioning: %s; retrying (a leader election?)", exc.__cause__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    history: int,
    description: str,
    replicas: int,
    report: ProvisionReport,
) -> None:
    """A KV bucket with ``replicas`` replicas: on a cluster, a bucket on one node would
    stop every orchestrator while that node is down. Older single-replica buckets are
    scaled up."""
    try:
        info = await js.stream_info(f"KV_{bucket}")
    except NotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=history,
                storage=StorageType.FILE,
                replicas=replicas,
                description=description,
            )
        )
        report.created.append(bucket)
        return
    if (info.config.num_replicas or 1) < replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)
    report.verified.append(bucket)


class _Transient(Exception):
    """A timeout or 503 while provisioning: a cluster between leaders."""


def _transient(exc: Exception) -> bool:
    if isinstance(exc, TimeoutError | NoRespondersError | ServiceUnavailableError):
        return True
    return isinstance(exc, APIError) and (exc.code == 503 or exc.err_code in (10008, 10009))


async def _provision_once(
    js: JetStreamContext, *, replicas: int, home: Path, identity: str, store: Path | None
) -> ProvisionReport:
    report = ProvisionReport()
    marker = _marker(home, identity)
    guard = None
    if marker.exists() or _store_has_log(store):
        guard = (
            f"the stream {LOG_STREAM} is missing, but {home} shows this server held a sisas "
            "log: it was deleted or its store is damaged. sisas will not create an empty "
            "log over it. Restore the store from a backup, or move the data folder aside "
            "to start a new log"
        )
    try:
        info = await _ensure(js, log_stream_config(replicas), report, guard=guard)
        if info.created is not None and marker.exists():
            recorded = json.loads(marker.read_text()).get("created")
            if recorded and recorded != info.created.isoformat():
                raise StoreWithoutStream(
                    f"the stream {LOG_STREAM} was re-created on {info.created.isoformat()} "
                    f"(this data folder recorded one created {recorded}): the original log "
                    "was deleted. Restore it from a backup, or move the data folder aside"
                )
        await _ensure(js, input_stream_config(replicas), report, guard=None)
        await _ensure(js, work_stream_config(replicas), report, guard=None)
        try:
            await js.object_store(ARTIFACT_BUCKET)
            report.verified.append(ARTIFACT_BUCKET)
        except NotFoundError:
            await js.create_object_store(
                ARTIFACT_BUCKET,
                ObjectStoreConfig(
                    description="sisas artifacts: run inputs and phase outputs by digest",
                    storage=StorageType.FILE,
                    replicas=replicas,
                ),
            )
            report.created.append(ARTIFACT_BUCKET)
        for bucket, history, about in (
            (CIRCUIT_BUCKET, 10, "sisas circuit breakers by pipeline"),
            (PIPELINE_BUCKET, 5, "sisas pipeline plans by name"),
        ):
            await _ensure_bucket(js, bucket, history, about, replicas, report)
        try:
            await js.key_value(BLOB_BUCKET)
            report.verified.append(BLOB_BUCKET)
        except (NotFoundError, BucketNotFoundError):
            await js.create_key_value(
                KeyValueConfig(
                    bucket=BLOB_BUCKET,
                    history=1,
                    storage=StorageType.FILE,
                    replicas=replicas,
                    max_value_size=INLINE_MAX,
                    description="sisas artifacts up to 512 KiB by digest",
                )
            )
            report.created.append(BLOB_BUCKET)
    except (StreamDrift, StoreWithoutStream):
        raise
    except Exception as exc:
        if _transient(exc):
            raise _Transient(str(exc)) from exc
        raise BusError(
            f"could not provision JetStream streams ({exc}): check that JetStream is enabled "
            f"on the server and that it has {replicas} node(s) for SISAS_REPLICAS={replicas}"
        ) from None
    if not marker.exists():
        home.mkdir(parents=True, exist_ok=True)
        marker.write_text(
            json.dumps(
                {
                    "stream": LOG_STREAM,
                    "server": identity,
                    "created": info.created.isoformat() if info.created else None,
                }
            )
        )
    return report
