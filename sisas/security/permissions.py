"""The NATS subject permissions of sisas's roles, and the ``authorization`` block made of them.

One table, :data:`ROLES`, says what each role may publish and subscribe to and why; the
nats-server config (:func:`auth_conf`) and the table in docs/security.md
(:func:`permissions_markdown`) are both rendered from it, so they cannot disagree.

- **orchestrator**: the services (orchestrator, projector, trigger service, ``sisas up``):
  append to the log, send inputs, create and read the streams and buckets, answer queries.
- **operator**: the CLI: send ``start_run`` / ``cancel_run``, put input artifacts, read.
- **worker**: take scheduled phases, read and put artifacts, register plans, report,
  answer who serves its pipelines.
- **auditor**: also dashboards: read the log, artifacts and plans, ask read-only queries.
- **upstream**: an outside system: publish its own subjects, nothing else.

Anything a role is not allowed is refused by the server; the deny lists only make the
dangerous refusals explicit (a deny wins over an allow, should someone widen an allow
list by hand). No role may delete, purge or update the log or the inputs stream, delete
a message, or use the account and server APIs. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from sisas.errors import UsageError
from sisas.signals.names import (
    ADMIT_PREFIX,
    ADMIT_STREAM,
    ARTIFACT_BUCKET,
    BLOB_BUCKET,
    CIRCUIT_BUCKET,
    IN_PREFIX,
    INPUT_STREAM,
    LIMIT_BUCKET,
    LIVE_PREFIX,
    LOG_PREFIX,
    LOG_STREAM,
    PIPELINE_BUCKET,
    PRESENCE_PREFIX,
    QUERY_PREFIX,
    QUERY_VERBS,
    SCHEDULE_BUCKET,
    TRIGGER_BUCKET,
    UPSTREAM_STREAM,
    WORK_PREFIX,
    WORK_STREAM,
    commit_subject,
)

__all__ = [
    "NEVER",
    "ROLE_NAMES",
    "ROLES",
    "UPSTREAM_INBOX",
    "Grant",
    "Role",
    "auth_conf",
    "check_upstream_subject",
    "permissions_markdown",
    "read_subjects",
    "role",
]

API: Final = "$JS.API"
UPSTREAM_INBOX: Final = "_INBOX_upstream"
"""The inbox prefix an upstream client sets to receive JetStream acks (and only its own)."""
UPSTREAM_PLACEHOLDER: Final = "<upstream subjects>"

_OBJ: Final = f"OBJ_{ARTIFACT_BUCKET}"
_KV_BLOBS: Final = f"KV_{BLOB_BUCKET}"
_KV_PLANS: Final = f"KV_{PIPELINE_BUCKET}"
_KV_CIRCUITS: Final = f"KV_{CIRCUIT_BUCKET}"
_KV_TRIGGERS: Final = f"KV_{TRIGGER_BUCKET}"
_KV_SCHEDULES: Final = f"KV_{SCHEDULE_BUCKET}"
_KV_LIMITS: Final = f"KV_{LIMIT_BUCKET}"
STREAMS: Final = (
    LOG_STREAM,
    INPUT_STREAM,
    WORK_STREAM,
    UPSTREAM_STREAM,
    _OBJ,
    _KV_BLOBS,
    _KV_PLANS,
    _KV_CIRCUITS,
    _KV_TRIGGERS,
    _KV_SCHEDULES,
    ADMIT_STREAM,
    _KV_LIMITS,
)
"""Every JetStream stream sisas creates (buckets are streams named ``KV_``/``OBJ_``)."""


@dataclass(frozen=True)
class Grant:
    """Subjects a role may publish to and subscribe to, for one purpose (``what``);
    ``reads``: streams it may read (the subjects of :func:`read_subjects` for each)."""

    what: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()

    @property
    def all_publish(self) -> tuple[str, ...]:
        return (*self.publish, *(p for s in self.reads for p in read_subjects(s)))


@dataclass(frozen=True)
class Role:
    """One NATS user's permissions. ``deny_publish`` adds to :data:`NEVER` (refused to
    every role). ``responses``: may answer requests it received (``allow_responses``),
    with any number of messages per request, for ``responses`` long."""

    name: str
    summary: str
    grants: tuple[Grant, ...]
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    responses: str = ""

    @property
    def publish(self) -> list[str]:
        return _unique(s for g in self.grants for s in g.all_publish)

    @property
    def subscribe(self) -> list[str]:
        return _unique(s for g in self.grants for s in g.subscribe)

    @property
    def refused_publish(self) -> list[str]:
        return _unique([*self.deny_publish, *NEVER])


def _unique(subjects: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(subjects))


def _info(*streams: str) -> tuple[str, ...]:
    return tuple(f"{API}.STREAM.INFO.{s}" for s in streams)


def read_subjects(stream: str) -> tuple[str, ...]:
    """What reading ``stream`` takes: its info, direct and plain gets, ephemeral and
    ordered consumers (with their flow control replies), pulling from them."""
    return (
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",
    )


def _durable(*streams: str) -> tuple[str, ...]:
    """Keeping durable consumers on a stream and acknowledging what they deliver."""
    out: list[str] = []
    for s in streams:
        out += [f"{API}.CONSUMER.DURABLE.CREATE.{s}.*", f"$JS.ACK.{s}.>"]
    return tuple(out)


NEVER: Final = (
    f"{API}.STREAM.DELETE.>",
    f"{API}.STREAM.PURGE.>",
    f"{API}.STREAM.MSG.DELETE.>",
    *(f"{API}.STREAM.UPDATE.{s}" for s in STREAMS if s != UPSTREAM_STREAM),
    f"{API}.STREAM.SNAPSHOT.>",
    f"{API}.STREAM.RESTORE.>",
    f"{API}.STREAM.PEER.REMOVE.>",
    f"{API}.ACCOUNT.>",
    f"{API}.SERVER.>",
    f"{API}.META.>",
    "$SYS.>",
)
"""Refused to every role: what could erase or rewrite history, or reach past sisas."""

_REPLIES: Final = Grant(
    "receive replies (JetStream acks, API and query answers)", subscribe=("_INBOX.>",)
)
_OPEN_BUS: Final = Grant(
    "check the streams' config on connect (`open_bus`), find a bucket's stream",
    publish=(
        *_info(LOG_STREAM, INPUT_STREAM, WORK_STREAM, _OBJ, _KV_BLOBS, _KV_PLANS, _KV_CIRCUITS),
        f"{API}.STREAM.NAMES",
    ),
)
_READ_LOG: Final = Grant(
    "read the log (direct gets, ordered and pull consumers)", reads=(LOG_STREAM,)
)
_READ_ARTIFACTS: Final = Grant(
    "read artifacts and pipeline plans", reads=(_OBJ, _KV_BLOBS, _KV_PLANS)
)
_PUT_ARTIFACTS: Final = Grant(
    "put artifacts (run inputs, phase outputs)", (f"$KV.{BLOB_BUCKET}.>", f"$O.{ARTIFACT_BUCKET}.>")
)
_READ_QUERIES: Final = tuple(f"{QUERY_PREFIX}.{v}" for v in QUERY_VERBS if v != "rebuild")


def _command(kind: str) -> str:
    return f"{IN_PREFIX}.*.*.{kind}"


_CANCELLED: Final = Grant(
    "learn of cancelled and failed runs as their commits are appended (a worker stops "
    "their attempts)",
    subscribe=(commit_subject("*", "*"),),
)
_TAKE_WORK: Final = Grant(
    "take work: its durable pull consumer on SISAS_WORK, acks",
    (
        f"{API}.CONSUMER.DURABLE.CREATE.{WORK_STREAM}.*",
        f"{API}.CONSUMER.CREATE.{WORK_STREAM}",
        f"{API}.CONSUMER.CREATE.{WORK_STREAM}.>",
        f"{API}.CONSUMER.INFO.{WORK_STREAM}.*",
        f"{API}.CONSUMER.MSG.NEXT.{WORK_STREAM}.*",
        f"$JS.ACK.{WORK_STREAM}.>",
    ),
)

ORCHESTRATOR: Final = Role(
    name="orchestrator",
    summary="the services: orchestrator, projector, trigger service, `sisas up`",
    grants=(
        Grant("append signals to the log", (f"{LOG_PREFIX}.>",)),
        Grant("offer scheduled attempts to workers", (f"{WORK_PREFIX}.>",)),
        Grant(
            "send inputs (trigger starts, reports of a worker in `sisas up`, rejection "
            "records; requests of limited pipelines, and their release)",
            (f"{IN_PREFIX}.>", f"{ADMIT_PREFIX}.>"),
        ),
        Grant("publish live progress (a worker in `sisas up`)", (f"{LIVE_PREFIX}.>",)),
        Grant(
            "answer queries (projector; replies via allow_responses)",
            subscribe=(f"{QUERY_PREFIX}.*",),
        ),
        Grant(
            "answer presence requests (an orchestrator, a worker in `sisas up`)",
            subscribe=(f"{PRESENCE_PREFIX}.>",),
        ),
        Grant(
            "hear of pipeline plans registered (the orchestrator keeps the plans it read)",
            subscribe=(f"$KV.{PIPELINE_BUCKET}.>",),
        ),
        _CANCELLED,
        Grant(
            "create the streams and buckets; extend SISAS_UPSTREAM to new trigger subjects",
            (
                *(f"{API}.STREAM.CREATE.{s}" for s in STREAMS),
                f"{API}.STREAM.UPDATE.{UPSTREAM_STREAM}",
                f"{API}.STREAM.NAMES",
            ),
        ),
        Grant("read every sisas stream and bucket", reads=STREAMS),
        Grant(
            "keep durable consumers (orchestrator, sisas-triggers, workers) and ack",
            (
                *_durable(INPUT_STREAM, UPSTREAM_STREAM, LOG_STREAM, WORK_STREAM, ADMIT_STREAM),
                *(f"{API}.CONSUMER.DELETE.{s}.*" for s in STREAMS),
            ),
        ),
        Grant(
            "write artifacts, plans, circuits, trigger message ids, schedule pauses",
            (
                f"$KV.{BLOB_BUCKET}.>",
                f"$O.{ARTIFACT_BUCKET}.>",
                f"$KV.{PIPELINE_BUCKET}.>",
                f"$KV.{CIRCUIT_BUCKET}.>",
                f"$KV.{TRIGGER_BUCKET}.>",
                f"$KV.{SCHEDULE_BUCKET}.>",
                f"$KV.{LIMIT_BUCKET}.>",
            ),
        ),
        _REPLIES,
    ),
    responses="15m",
)

OPERATOR: Final = Role(
    name="operator",
    summary="the CLI: `sisas run`, `cancel`, `show`, `signals`, `replay`",
    grants=(
        Grant(
            "send commands: start_run, cancel_run", (_command("start_run"), _command("cancel_run"))
        ),
        Grant("put input artifacts", _PUT_ARTIFACTS.publish),
        Grant(
            "pause and resume schedules (`sisas schedules pause|resume|list`)",
            (f"{API}.STREAM.CREATE.{_KV_SCHEDULES}", f"$KV.{SCHEDULE_BUCKET}.>"),
            reads=(_KV_SCHEDULES,),
        ),
        Grant(
            "request runs of limited pipelines, cancel them while they wait; set limits "
            "(`sisas limits set|clear`)",
            (
                f"{ADMIT_PREFIX}.*.*",
                f"{ADMIT_PREFIX}.*.*.cancel",
                f"{API}.STREAM.CREATE.{ADMIT_STREAM}",
                f"{API}.STREAM.INFO.{ADMIT_STREAM}",
                f"{API}.STREAM.CREATE.{_KV_LIMITS}",
                f"$KV.{LIMIT_BUCKET}.>",
            ),
            reads=(_KV_LIMITS,),
        ),
        _OPEN_BUS,
        _READ_LOG,
        _READ_ARTIFACTS,
        Grant("ask the query service (also `projections rebuild`)", (f"{QUERY_PREFIX}.*",)),
        Grant(
            "ask who is live: a worker of a pipeline, an orchestrator (`run`, `cancel`)",
            (f"{PRESENCE_PREFIX}.>",),
        ),
        Grant("receive live progress", subscribe=(f"{LIVE_PREFIX}.>",)),
        _REPLIES,
    ),
    deny_publish=(
        f"{LOG_PREFIX}.>",
        f"{WORK_PREFIX}.>",
        _command("phase_report"),
        f"$KV.{PIPELINE_BUCKET}.>",
        f"$KV.{CIRCUIT_BUCKET}.>",
        f"$KV.{TRIGGER_BUCKET}.>",
    ),
)

WORKER: Final = Role(
    name="worker",
    summary="`sisas worker`: runs the phases of its pipelines",
    grants=(
        _TAKE_WORK,
        _OPEN_BUS,
        _READ_LOG,
        _READ_ARTIFACTS,
        _PUT_ARTIFACTS,
        Grant(
            "register pipeline plans",
            (f"{API}.STREAM.CREATE.{_KV_PLANS}", f"$KV.{PIPELINE_BUCKET}.>"),
        ),
        Grant("report phases (started, completed, failed)", (_command("phase_report"),)),
        Grant("publish live progress", (f"{LIVE_PREFIX}.>",)),
        Grant(
            "answer presence requests for its pipelines (replies via allow_responses)",
            subscribe=(f"{PRESENCE_PREFIX}.worker.*",),
        ),
        _CANCELLED,
        _REPLIES,
    ),
    deny_publish=(
        f"{LOG_PREFIX}.>",
        f"{WORK_PREFIX}.>",
        _command("start_run"),
        _command("cancel_run"),
    ),
    responses="1m",
)

AUDITOR: Final = Role(
    name="auditor",
    summary="auditors and dashboards: `replay verify`, `audit`, `sisas dashboard`; read only",
    grants=(
        _OPEN_BUS,
        _READ_LOG,
        _READ_ARTIFACTS,
        Grant("ask read-only queries (not rebuild)", _READ_QUERIES),
        Grant("receive live progress", subscribe=(f"{LIVE_PREFIX}.>",)),
        _REPLIES,
    ),
    deny_publish=(
        f"{LOG_PREFIX}.>",
        f"{IN_PREFIX}.>",
        f"{WORK_PREFIX}.>",
        "$KV.>",
        "$O.>",
        "$JS.ACK.>",
        f"{QUERY_PREFIX}.rebuild",
    ),
)

UPSTREAM: Final = Role(
    name="upstream",
    summary="an outside system whose messages trigger runs",
    grants=(
        Grant("publish its own subjects", (UPSTREAM_PLACEHOLDER,)),
        Grant(
            f"receive JetStream acks on its own inbox prefix ({UPSTREAM_INBOX})",
            subscribe=(f"{UPSTREAM_INBOX}.>",),
        ),
    ),
    deny_publish=("sisas.>", "$JS.>", "$KV.>", "$O.>", "_INBOX.>"),
    deny_subscribe=("sisas.>", "_INBOX.>", "$JS.>"),
)

ROLES: Final = (ORCHESTRATOR, OPERATOR, WORKER, AUDITOR, UPSTREAM)
ROLE_NAMES: Final = tuple(r.name for r in ROLES)


def role(name: str) -> Role:
    """The role called ``name``; raises :class:`UsageError` naming the roles."""
    for r in ROLES:
        if r.name == name:
            return r
    raise UsageError(f"unknown role {name!r}: use one of {', '.join(ROLE_NAMES)}")


_TOKEN = re.compile(r"^[^\s.*>]+$")
_RESERVED = ("sisas", "_INBOX")


def check_upstream_subject(pattern: str) -> str:
    """``pattern`` if an upstream may be given it; raises :class:`UsageError` if it is not
    a subject pattern or could reach sisas's own or the server's subjects."""
    tokens = pattern.split(".")
    bad = not pattern or any(
        not (_TOKEN.match(t) or t == "*" or (t == ">" and i == len(tokens) - 1))
        for i, t in enumerate(tokens)
    )
    if bad:
        raise UsageError(
            f"--upstream {pattern!r} is not a NATS subject pattern: use dot-separated "
            "tokens, '*' for one token, '>' only at the end, e.g. upstream.catalogues.>"
        )
    first = tokens[0]
    if first in ("*", ">") or first.startswith("$") or first.startswith(_RESERVED):
        raise UsageError(
            f"--upstream {pattern!r} could reach sisas's or the server's own subjects: start "
            "it with a token of your own, e.g. upstream.catalogues.>"
        )
    return pattern


def _subjects(values: Sequence[str], upstream: Sequence[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(upstream if v == UPSTREAM_PLACEHOLDER else [v])
    return out


def _block(subjects: Sequence[str], indent: str) -> str:
    inner = "".join(f"{indent}  {json.dumps(s)}\n" for s in subjects)
    return f"[\n{inner}{indent}]"


def _permissions(r: Role, upstream: Sequence[str], indent: str) -> str:
    lines = [f"{indent}permissions: {{"]
    for what, allow, deny in (
        ("publish", _subjects(r.publish, upstream), r.refused_publish),
        ("subscribe", r.subscribe, r.deny_subscribe),
    ):
        i2 = indent + "  "
        lines.append(f"{i2}{what}: {{")
        if allow:
            lines.append(f"{i2}  allow: {_block(allow, i2 + '  ')}")
        else:
            lines.append(f'{i2}  deny: [">"]')
        if deny and allow:
            lines.append(f"{i2}  deny: {_block(deny, i2 + '  ')}")
        lines.append(f"{i2}}}")
    if r.responses:
        lines.append(f'{indent}  allow_responses: {{ max: 1000000, expires: "{r.responses}" }}')
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def auth_conf(users: dict[str, str], upstream: Sequence[str] = ()) -> str:
    """The nats-server ``authorization { users: [...] }`` block for ``users`` (role name →
    public nkey). Raises :class:`UsageError` for an unknown role, or an upstream user
    without ``upstream`` subjects."""
    entries = []
    for name, public in users.items():
        r = role(name)
        if r is UPSTREAM and not upstream:
            raise UsageError("the upstream role needs its subjects: pass --upstream SUBJECT")
        entries.append(
            f"    # {r.name}: {r.summary}\n"
            f"    {{\n"
            f"      nkey: {json.dumps(public)}\n"
            f"{_permissions(r, upstream, '      ')}\n"
            f"    }}"
        )
    body = "\n".join(entries)
    return f"authorization {{\n  users: [\n{body}\n  ]\n}}\n"


def _cell(subjects: Sequence[str], reads: Sequence[str] = ()) -> str:
    cells = [f"`{s}`" for s in subjects] + [f"read `{s}`" for s in reads]
    return "<br>".join(cells) if cells else "—"


def permissions_markdown() -> str:
    """The permissions of every role as Markdown (docs/security.md holds it): what is
    refused to all, what reading a stream takes, then each role's grants and refusals."""
    never = "<br>".join(f"`{s}`" for s in NEVER)
    reading = "<br>".join(f"`{s}`" for s in read_subjects("S"))
    rows = [
        "| | publish | subscribe |",
        "|---|---|---|",
        f"| refused to every role | {never} | — |",
        f"| read `S` (stream S) allows | {reading} | — |",
        "",
        "| role | may | publish | subscribe |",
        "|---|---|---|---|",
    ]
    for r in ROLES:
        for i, g in enumerate(r.grants):
            name = f"**{r.name}**" if i == 0 else ""
            rows.append(
                f"| {name} | {g.what} | {_cell(g.publish, g.reads)} | {_cell(g.subscribe)} |"
            )
        if r.responses:
            rows.append(
                f"| | reply to requests it received | allow_responses ({r.responses}) | — |"
            )
        own = _cell(r.deny_publish) if r.deny_publish else "only what is refused to every role"
        rows.append(f"| | **refused** (and all not above) | {own} | {_cell(r.deny_subscribe)} |")
    return "\n".join(rows) + "\n"
