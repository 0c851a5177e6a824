"""The secured profile on a real nats-server: each role can do what it may, and the server
refuses it the rest.

One server runs with the ``auth.conf`` that ``sisas security init`` wrote (JetStream on).
The orchestrator role provisions the streams and runs the orchestrator, the projector
and the trigger service; a worker connects as the worker role; the operator starts a
run through sisas's own code; the upstream publishes on its subject and the trigger
starts a second run; the auditor verifies the whole log with the signing key trusted.
Then every role tries what it must not do. A refusal counts only when the server said
so (the client's error callback receives the "Permissions Violation" for that subject)
AND the target is unchanged (the stream does not hold the message, the stream still
exists with its messages). Allowed actions go through sisas's code paths, and the
server's log must show no refusal beyond the ones provoked here. A table of role x
action → result is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from nats.aio.client import Client as NATS

from sisas.bus.embedded import find_binary
from sisas.bus.inputs import publish_input
from sisas.bus.presence import worker_live
from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.bus.streams import config_drift, log_stream_config
from sisas.client.queries import ask
from sisas.client.verification import verify_log
from sisas.errors import BusUnavailable, UsageError
from sisas.handlers.triggers import Rule
from sisas.loader import load_pipelines
from sisas.security.permissions import ROLES, auth_conf, permissions_markdown
from sisas.security.profile import init_profile, user_seed
from sisas.services.host import running_services
from sisas.services.triggers import TriggerService, evaluation_chain
from sisas.services.worker import Worker
from sisas.signals import ENDING_KINDS, StoredSignal, TriggerEvaluated
from sisas.signals.inputs import CancelRun, StartRun
from tests.cli_process import base_env, env_file, sisas, sisas_async
from tests.conftest import NatsServer, spawn_nats
from tests.runs import ROOT, TEST_PIPES

UPSTREAM = "upstream.catalogues.>"


# -- the record of what each role did -----------------------------------------------


@dataclass
class Check:
    role: str
    action: str
    expected: str  # "allowed" or "refused"
    observed: str
    evidence: str


@dataclass
class Matrix:
    checks: list[Check] = field(default_factory=list)

    def add(self, role: str, action: str, expected: str, observed: str, evidence: str) -> None:
        self.checks.append(Check(role, action, expected, observed, evidence))

    def wrong(self) -> list[Check]:
        return [c for c in self.checks if c.expected != c.observed]

    def table(self) -> str:
        width = max(len(c.action) for c in self.checks)
        lines = [f"{'role':<13}{'action':<{width + 2}}{'expected':<10}{'observed':<10}evidence"]
        for c in self.checks:
            mark = "" if c.expected == c.observed else "   <-- WRONG"
            lines.append(
                f"{c.role:<13}{c.action:<{width + 2}}{c.expected:<10}{c.observed:<10}"
                f"{c.evidence}{mark}"
            )
        counts: dict[tuple[str, str], int] = {}
        for c in self.checks:
            counts[(c.role, c.observed)] = counts.get((c.role, c.observed), 0) + 1
        lines.append("")
        for r in ROLES:
            a, f = counts.get((r.name, "allowed"), 0), counts.get((r.name, "refused"), 0)
            lines.append(f"{r.name:<13}{a} allowed, {f} refused")
        lines.append(f"total: {len(self.checks)} checks, {len(self.wrong())} not as expected")
        return "\n".join(lines)


class Client:
    """A raw connection as one role, recording what the server refuses it."""

    def __init__(self, role: str, nc: NATS, errors: list[str]) -> None:
        self.role = role
        self.nc = nc
        self.errors = errors

    @classmethod
    async def connect(cls, role: str, url: str, seed: Path, **options: Any) -> Client:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            url, nkeys_seed=str(seed), error_cb=on_error, allow_reconnect=False, **options
        )
        return cls(role, nc, errors)

    async def refusal(self, verb: str, subject: str, before: int) -> str | None:
        """The server's refusal of ``verb`` ("Publish"/"Subscription") to ``subject`` sent
        after ``before`` errors, or None. The server answers a PUB before the PONG of a
        later PING, so after a flush the refusal, if any, has arrived."""
        await self.nc.flush()
        want = f'permissions violation for {verb.lower()} to "{subject.lower()}"'
        for _ in range(100):  # the callback runs as a task: let it
            for e in self.errors[before:]:
                if want in e.lower():
                    return e
            await asyncio.sleep(0.01)
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


# -- the server and the profile -------------------------------------------------------


@dataclass
class Secured:
    server: NatsServer
    keys: Path
    homes: Path
    signing_public: str

    def settings(self, role: str) -> Settings:
        return Settings(
            home=self.homes / role,
            nats_url=self.server.url,
            replicas=1,
            timeout=5.0,
            nkey=self.keys / f"{role}.nk",
            signing_key=self.keys / "signing.nk" if role == "orchestrator" else None,
            # as worker.env has it: the worker runs only work the orchestrator signed
            trusted_keys=frozenset({self.signing_public}) if role == "worker" else frozenset(),
        )

    def seed(self, role: str) -> Path:
        return self.keys / f"{role}.nk"

    def violations(self) -> list[tuple[str, str, str]]:
        """(public nkey, Publish/Subscription, subject) of every refusal in the server log."""
        text = (self.server.store.parent / "nats.log").read_text()
        pattern = r'/nkey:([A-Z0-9]+)" - (Publish|Subscription) Violation - Subject "([^"]+)"'
        return [(u, kind, s) for u, kind, s in re.findall(pattern, text)]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    keys = tmp_path / "keys"
    profile = init_profile(keys, upstream=[UPSTREAM])
    conf = tmp_path / "server.conf"
    conf.write_text('include "keys/auth.conf"\n')  # relative to the config file
    server = spawn_nats(tmp_path / "nats", "-c", str(conf))
    try:
        yield Secured(server, keys, tmp_path / "homes", profile.signing_public_key)
    finally:
        server.stop()


# -- helpers over the orchestrator's view of the streams ------------------------------


async def last_seq_on(bus: Bus, stream: str, subject: str) -> int:
    """Stream sequence of the last message on ``subject`` in ``stream`` (0: none)."""
    try:
        msg = await bus.js.get_last_msg(stream, subject)
    except Exception:  # nats-py raises NotFoundError here (or a 404 APIError)
        return 0
    return int(msg.seq or 0)


async def message_count(bus: Bus, stream: str) -> int:
    return int((await bus.js.stream_info(stream)).state.messages)


async def wait_end(bus: Bus, run_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = await bus.log.last_of_run(run_id)
        if isinstance(last, StoredSignal) and last.signal.kind in ENDING_KINDS:
            return last.signal.kind
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end within {timeout}s")


class Suite:
    """Runs the checks, recording each in the matrix."""

    def __init__(self, matrix: Matrix, admin: Bus) -> None:
        self.m = matrix
        self.admin = admin  # the orchestrator's bus: reads what each attempt left behind
        self.provoked: set[tuple[str, str, str]] = set()

    async def may(self, role: str, action: str, attempt: Awaitable[str]) -> None:
        try:
            evidence = await attempt
        except Exception as exc:
            self.m.add(role, action, "allowed", "refused", f"{type(exc).__name__}: {exc}"[:120])
            return
        self.m.add(role, action, "allowed", "allowed", evidence)

    async def may_not(
        self,
        c: Client,
        action: str,
        subject: str,
        *,
        payload: bytes = b"{}",
        stream: str | None = None,
        unchanged: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Publish ``subject`` as ``c`` (with a reply inbox it listens on): refused when
        the server says so, no answer came, ``stream`` holds no new message on
        ``subject`` and ``unchanged`` (the target's state) holds."""
        before_seq = await last_seq_on(self.admin, stream, subject) if stream else 0
        before = len(c.errors)
        inbox = c.nc.new_inbox()
        answers = await c.nc.subscribe(inbox)
        await c.nc.publish(subject, payload, reply=inbox)
        error = await c.refusal("Publish", subject, before)
        self.provoked.add((c.role, "Publish", subject))
        await self.admin.nc.flush()
        await c.nc.flush()
        intact = answers.pending_msgs == 0
        notes = ["no answer" if intact else "ANSWERED"]
        await answers.unsubscribe()
        if stream is not None:
            same = await last_seq_on(self.admin, stream, subject) == before_seq
            intact = intact and same
            notes.append(f"{stream} {'unchanged' if same else 'STORED IT'}")
        if unchanged is not None:
            same = await unchanged()
            intact = intact and same
            notes.append("target unchanged" if same else "TARGET CHANGED")
        observed = "refused" if error is not None and intact else "allowed"
        said = "Permissions Violation" if error is not None else "no error from the server"
        self.m.add(c.role, action, "refused", observed, "; ".join([said, *notes]))

    async def may_not_subscribe(
        self, c: Client, action: str, subject: str, probe: Callable[[], Awaitable[object]]
    ) -> None:
        """Subscribe as ``c``: refused when the server says so and what ``probe`` then
        sends on a subject matching ``subject`` is not delivered to ``c``."""
        before = len(c.errors)
        sub = await c.nc.subscribe(subject)
        error = await c.refusal("Subscription", subject, before)
        self.provoked.add((c.role, "Subscription", subject))
        await probe()
        await self.admin.nc.flush()
        await c.nc.flush()
        got = sub.pending_msgs
        observed = "refused" if error is not None and got == 0 else "allowed"
        said = "Permissions Violation" if error is not None else "no error from the server"
        self.m.add(c.role, action, "refused", observed, f"{said}; {got} message(s) delivered")


def run_input(run_id: str, digest: str) -> StartRun:
    return StartRun(
        id=f"start:{run_id}",
        pipeline="slow",
        run_id=run_id,
        at=datetime.now(UTC),
        seed=7,
        input_digest=digest,
        requested_by="permissions test",
    )


def forged_signal(run_id: str) -> bytes:
    return json.dumps({"id": f"{run_id}:99", "run_id": run_id, "kind": "run_cancelled"}).encode()


# -- the suite ------------------------------------------------------------------------


async def test_each_role_may_do_its_work_and_the_server_refuses_it_the_rest(
    secured: Secured, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = Matrix()
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    rules = [Rule(name="catalogue", subject="upstream.>", pipeline="slow", input="$")]
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        # orchestrator: provisions, then runs the orchestrator, projector, triggers
        orch = await stack.enter_async_context(
            open_bus(secured.settings("orchestrator"), name="orchestrator")
        )
        s = Suite(m, orch)
        created = ", ".join(orch.provisioned.created)
        m.add("orchestrator", "create the streams and buckets", "allowed", "allowed", created)
        triggers = TriggerService(orch, rules)
        await s.may("orchestrator", "set up the trigger service", _started(triggers))
        await stack.enter_async_context(running_services(orch, {}, projector=True))
        tasks = [asyncio.create_task(triggers.run(stop))]

        # worker: its own connection and role
        wbus = await stack.enter_async_context(open_bus(secured.settings("worker"), name="worker"))
        worker = Worker(wbus, {"slow": pipes["slow"]}, concurrency=2)
        await s.may("worker", "register its pipeline plan", _registered(worker))
        tasks.append(asyncio.create_task(worker.run(stop)))

        # operator: starts a run through sisas's own code and follows it
        op = await stack.enter_async_context(
            open_bus(secured.settings("operator"), name="operator")
        )
        await s.may(
            "operator", "ask whether a live worker runs a pipeline", _worker_live(op, "slow")
        )
        digest = await op.artifacts.put(b'{"seconds": 0.01}')
        m.add("operator", "put the run's input artifact", "allowed", "allowed", digest[:19])
        await s.may(
            "operator", "send start_run (publish_input)", _sent(op, run_input("p1", digest))
        )
        ended = await wait_end(op, "p1")
        await s.may("operator", "read the run's signals", _read_run(op, "p1"))
        await s.may("operator", "follow a run (ordered consumer)", _follow_run(op, "p1"))
        await s.may("operator", "ask the query service (show)", _asked(op, "show", run_id="p1"))
        cancel = CancelRun(id="cancel:p1", pipeline="slow", run_id="p1", at=datetime.now(UTC))
        await s.may("operator", "send cancel_run", _sent(op, cancel))
        m.add(
            "worker",
            "take work, run phases, put outputs, report",
            "allowed",
            "allowed"
            if ended == "run_completed" and worker.completed >= 2 and worker.trusted
            else "refused",
            f"run p1 {ended}, {worker.completed} signed phases done",
        )
        m.add(
            "orchestrator",
            "append signals (decide the run)",
            "allowed",
            "allowed" if ended == "run_completed" else "refused",
            f"run p1 {ended}",
        )

        # upstream: publishes on its subject; the trigger starts a run
        up = await Client.connect(
            "upstream", secured.server.url, secured.seed("upstream"), inbox_prefix="_INBOX_upstream"
        )
        stack.push_async_callback(up.close)
        await s.may("upstream", "publish its subject (JetStream ack)", _upstream_publish(up))
        await s.may("orchestrator", "start a run from an upstream message", _triggered(orch))
        await s.may("orchestrator", "extend SISAS_UPSTREAM (new rule)", _extended(orch))
        await s.may("orchestrator", "record circuit state (KV)", _circuits(orch))

        # auditor: reads everything, verifies with the signing key trusted
        aud = await stack.enter_async_context(open_bus(secured.settings("auditor"), name="auditor"))
        await s.may("auditor", "verify the whole log, signatures required", _verified(aud, secured))
        await s.may("auditor", "read an artifact", _artifact(aud, digest))
        await s.may("auditor", "read the registered plans", _plans(aud))
        await s.may("auditor", "ask the query service (runs)", _asked(aud, "runs"))
        await s.may("auditor", "follow the log live (dashboard)", _follow_log(aud))

        await _refused_by_sisas(s, wbus)
        await _refusals(s, secured, stack)

        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    await _cli_verify(m, secured, tmp_path)
    _server_log(m, s, secured)
    with capsys.disabled():
        print("\n\nrole x action on a nats-server with the generated auth.conf\n")
        print(m.table())
    assert not m.wrong(), "\n" + m.table()


# -- allowed actions, each through sisas's code --------------------------------------


async def _started(service: TriggerService) -> str:
    await service.start()
    return "SISAS_UPSTREAM, sisas-triggers bucket and consumer"


async def _registered(worker: Worker) -> str:
    await worker.register()
    return "plan of slow in sisas-pipelines"


async def _sent(bus: Bus, inp: StartRun | CancelRun) -> str:
    seq = await publish_input(bus.js, inp, attempts=1)
    return f"SISAS_IN seq {seq}"


async def _worker_live(bus: Bus, pipeline: str) -> str:
    # the worker answers once its task runs: ask until it does (a refusal never answers)
    deadline = time.monotonic() + 30
    while not await worker_live(bus.wire, pipeline, timeout=0.5):
        if time.monotonic() > deadline:
            raise AssertionError(f"no worker of {pipeline} answered")
        await asyncio.sleep(0.05)
    return f"a worker of {pipeline} answered"


async def _read_run(bus: Bus, run_id: str) -> str:
    records = await bus.log.read_run(run_id)
    assert records and all(isinstance(r, StoredSignal) for r in records)
    return f"{len(records)} signals"


async def _follow_run(bus: Bus, run_id: str) -> str:
    async with contextlib.aclosing(bus.log.follow_run(run_id)) as records:
        async for rec in records:
            assert isinstance(rec, StoredSignal)
            return f"first: {rec.signal.kind}"
    raise AssertionError("nothing followed")


async def _follow_log(bus: Bus) -> str:
    async with contextlib.aclosing(bus.log.follow(from_seq=1, live=True)) as records:
        async for rec in records:
            assert isinstance(rec, StoredSignal)
            return f"first: seq {rec.stream_seq} {rec.signal.kind}"
    raise AssertionError("nothing followed")


async def _asked(bus: Bus, verb: str, **params: Any) -> str:
    answer = await ask(bus, verb, params, timeout=30)
    assert answer.served_by == "projector", answer.served_by
    return f"answered by the projector as of seq {answer.as_of}"


async def _upstream_publish(up: Client) -> str:
    js = up.nc.jetstream()
    data = b'{"seconds": 0.01, "catalogue": "c1"}'
    ack = await js.publish("upstream.catalogues.c1", data, headers={"Nats-Msg-Id": "c1"})
    return f"{ack.stream} seq {ack.seq}"


async def _triggered(bus: Bus) -> str:
    chain = evaluation_chain("c1")
    deadline = time.monotonic() + 60
    while (last := await bus.log.last_of_run(chain)) is None:
        assert time.monotonic() < deadline, "the trigger never recorded its evaluation"
        await asyncio.sleep(0.05)
    assert isinstance(last, StoredSignal) and isinstance(last.signal.body, TriggerEvaluated)
    run_id = last.signal.body.results[0].run_id
    ended = await wait_end(bus, run_id)
    assert ended == "run_completed", ended
    return f"run {run_id} {ended}"


async def _extended(bus: Bus) -> str:
    rule = Rule(name="more", subject="upstream2.>", pipeline="slow")
    service = TriggerService(bus, [rule])
    await service.start()
    await service.close()
    subjects = (await bus.js.stream_info("SISAS_UPSTREAM")).config.subjects or []
    assert "upstream2.>" in subjects, subjects
    return f"subjects {', '.join(subjects)}"


async def _circuits(bus: Bus) -> str:
    from sisas.bus.circuits import CircuitBoard
    from sisas.handlers.circuit import Circuit

    await CircuitBoard(bus.js).store("slow", {"nap": Circuit(failures=0)})
    return "sisas-circuits slow"


async def _verified(bus: Bus, secured: Secured) -> str:
    report = await verify_log(bus, None, trusted=frozenset({secured.signing_public}))
    assert report.intact, report.first
    assert report.runs >= 3 and all(v.signed == "all" for v in report.verdicts), [
        (v.run_id, v.signed) for v in report.verdicts
    ]
    return f"{report.runs} runs, {report.signals} signals intact, all signed"


async def _artifact(bus: Bus, digest: str) -> str:
    data = await bus.artifacts.get(digest)
    return f"{len(data)} bytes, digest checked"


async def _plans(bus: Bus) -> str:
    names = await PlanRegistry(bus.js).names()
    assert "slow" in names, names
    return f"plans: {', '.join(names)}"


# -- refused actions ------------------------------------------------------------------


async def _refused_by_sisas(s: Suite, wbus: Bus) -> None:
    """sisas's own publish path as a worker: the refusal is reported at once, by name."""
    inp = run_input("w0", "sha256:00")
    subject = "sisas.in.slow.w0.start_run"
    s.provoked.add(("worker", "Publish", subject))
    js = wbus.nc.jetstream(timeout=1.0)  # one refused attempt costs one timeout
    try:
        await publish_input(js, inp)
        said = ""
    except BusUnavailable as exc:
        said = str(exc)
    kept = await last_seq_on(s.admin, "SISAS_IN", subject) == 0
    ok = "the server refused" in said and "SISAS_NATS_NKEY" in said and kept
    s.m.add(
        "worker",
        "send start_run through sisas (publish_input)",
        "refused",
        "refused" if ok else "allowed",
        "BusUnavailable naming the role's permissions; SISAS_IN unchanged"
        if ok
        else f"{said or 'published'}; SISAS_IN {'unchanged' if kept else 'STORED IT'}",
    )


async def _refusals(s: Suite, secured: Secured, stack: contextlib.AsyncExitStack) -> None:
    admin = s.admin
    url = secured.server.url
    clients: dict[str, Client] = {}
    for name in ("orchestrator", "operator", "worker", "auditor"):
        clients[name] = await Client.connect(name, url, secured.seed(name))
        stack.push_async_callback(clients[name].close)
    up = await Client.connect(
        "upstream", url, secured.seed("upstream"), inbox_prefix="_INBOX_upstream"
    )
    stack.push_async_callback(up.close)
    log_count = await message_count(admin, "SISAS_LOG")
    in_count = await message_count(admin, "SISAS_IN")

    async def log_kept() -> bool:
        return await message_count(admin, "SISAS_LOG") >= log_count

    async def inputs_kept() -> bool:
        return await message_count(admin, "SISAS_IN") >= in_count

    async def log_config_kept() -> bool:
        cfg = (await admin.js.stream_info("SISAS_LOG")).config
        return config_drift(cfg, log_stream_config(1)) == []

    async def first_signal_kept() -> bool:
        return int((await admin.js.get_msg("SISAS_LOG", seq=1)).seq or 0) == 1

    def consumer_kept(stream: str, name: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await admin.js.consumer_info(stream, name)).name == name

        return check

    limited = (await admin.js.stream_info("SISAS_LOG")).config
    limited.max_msgs_per_subject = 1  # would silently delete history
    limit = json.dumps(limited.as_dict()).encode()
    delete_log = "$JS.API.STREAM.DELETE.SISAS_LOG"
    report = json.dumps({"kind": "phase_report", "id": "x"}).encode()

    o = clients["orchestrator"]
    await s.may_not(o, "delete the log stream", delete_log, unchanged=log_kept)
    await s.may_not(
        o, "purge the inputs stream", "$JS.API.STREAM.PURGE.SISAS_IN", unchanged=inputs_kept
    )
    await s.may_not(
        o,
        "add a limit to the log (stream update)",
        "$JS.API.STREAM.UPDATE.SISAS_LOG",
        payload=limit,
        unchanged=log_config_kept,
    )
    await s.may_not(
        o,
        "delete a signal from the log",
        "$JS.API.STREAM.MSG.DELETE.SISAS_LOG",
        payload=b'{"seq": 1}',
        unchanged=first_signal_kept,
    )
    await s.may_not(
        o,
        "publish outside sisas (an upstream subject)",
        "upstream.catalogues.fake",
        stream="SISAS_UPSTREAM",
    )

    op = clients["operator"]
    await s.may_not(
        op,
        "append a signal to the log",
        "sisas.run.slow.p1._.run_cancelled",
        payload=forged_signal("p1"),
        stream="SISAS_LOG",
    )
    await s.may_not(
        op,
        "publish a worker report",
        "sisas.in.slow.p1.phase_report",
        payload=report,
        stream="SISAS_IN",
    )
    await s.may_not(
        op, "register a plan (KV write)", "$KV.sisas-pipelines.evil", stream="KV_sisas-pipelines"
    )
    await s.may_not(op, "delete the log stream", delete_log, unchanged=log_kept)

    w = clients["worker"]
    start = json.dumps({"kind": "start_run", "id": "start:w1"}).encode()
    await s.may_not(
        w, "send start_run", "sisas.in.slow.w1.start_run", payload=start, stream="SISAS_IN"
    )
    await s.may_not(w, "send cancel_run", "sisas.in.slow.p1.cancel_run", stream="SISAS_IN")
    await s.may_not(
        w,
        "append a signal to the log",
        "sisas.run.slow.p1._.run_completed",
        payload=forged_signal("p1"),
        stream="SISAS_LOG",
    )
    await s.may_not(
        w,
        "offer work to workers",
        "sisas.work.slow.p1",
        payload=forged_signal("p1"),
        stream="SISAS_WORK",
    )
    await s.may_not(
        w,
        "add a limit to the log (stream update)",
        "$JS.API.STREAM.UPDATE.SISAS_LOG",
        payload=limit,
        unchanged=log_config_kept,
    )
    await s.may_not(
        w,
        "delete the orchestrator's consumer",
        "$JS.API.CONSUMER.DELETE.SISAS_IN.orchestrator",
        unchanged=consumer_kept("SISAS_IN", "orchestrator"),
    )

    a = clients["auditor"]
    await s.may_not(
        a, "send start_run", "sisas.in.slow.a1.start_run", payload=start, stream="SISAS_IN"
    )
    await s.may_not(
        a,
        "publish a worker report",
        "sisas.in.slow.p1.phase_report",
        payload=report,
        stream="SISAS_IN",
    )
    await s.may_not(
        a,
        "append a signal to the log",
        "sisas.run.slow.p1._.run_cancelled",
        payload=forged_signal("p1"),
        stream="SISAS_LOG",
    )
    await s.may_not(
        a, "put an artifact (KV write)", "$KV.sisas-blobs.forged", stream="KV_sisas-blobs"
    )
    await s.may_not(a, "put an object", "$O.sisas-artifacts.M.forged", stream="OBJ_sisas-artifacts")
    await s.may_not(
        a, "write circuit state (KV write)", "$KV.sisas-circuits.slow", stream="KV_sisas-circuits"
    )
    await s.may_not(a, "ask for a projection rebuild", "sisas.query.rebuild")
    await s.may_not(
        a,
        "delete a worker's consumer",
        "$JS.API.CONSUMER.DELETE.SISAS_WORK.worker-slow",
        unchanged=consumer_kept("SISAS_WORK", "worker-slow"),
    )
    await s.may_not(a, "purge the log stream", "$JS.API.STREAM.PURGE.SISAS_LOG", unchanged=log_kept)
    await _deliver_into_inputs(s, a, in_count)

    await s.may_not(
        up, "publish outside its subjects", "upstream.orders.o1", stream="SISAS_UPSTREAM"
    )
    await s.may_not(
        up, "send start_run", "sisas.in.slow.u1.start_run", payload=start, stream="SISAS_IN"
    )
    await s.may_not(
        up,
        "append a signal to the log",
        "sisas.run.slow.p1._.run_cancelled",
        payload=forged_signal("p1"),
        stream="SISAS_LOG",
    )
    await s.may_not(
        up, "read the log (direct get)", "$JS.API.DIRECT.GET.SISAS_LOG", payload=b'{"seq": 1}'
    )
    await s.may_not_subscribe(
        up, "watch live progress", "sisas.live.>", lambda: admin.nc.publish("sisas.live.x", b"1")
    )
    await s.may_not_subscribe(
        up, "read replies meant for others", "_INBOX.>", lambda: admin.js.stream_info("SISAS_LOG")
    )


async def _deliver_into_inputs(s: Suite, a: Client, in_count: int) -> None:
    """A reader may create consumers, and so choose where the server delivers: it must
    not get log messages stored in SISAS_IN that way (nothing listens on sisas.in)."""
    js = a.nc.jetstream()
    target = "sisas.in.slow.a2.start_run"
    info = await js.add_consumer(
        "SISAS_LOG", deliver_subject=target, deliver_policy="all", inactive_threshold=2.0
    )
    delivered = 0
    for _ in range(20):  # give the server the chance to deliver, if it would
        delivered = int(
            (await s.admin.js.consumer_info("SISAS_LOG", info.name)).delivered.stream_seq
        )
        if delivered:
            break
        await asyncio.sleep(0.1)
    kept = await last_seq_on(s.admin, "SISAS_IN", target) == 0
    with contextlib.suppress(Exception):
        await s.admin.js.delete_consumer("SISAS_LOG", info.name)
    s.m.add(
        "auditor",
        "inject log messages into SISAS_IN via a consumer",
        "refused",
        "refused" if kept else "allowed",
        f"consumer created, {delivered} delivered, SISAS_IN "
        + ("unchanged" if kept else "STORED IT"),
    )


# -- the sisas command with the auditor's env file, and the server's own account --------


async def _cli_verify(m: Matrix, secured: Secured, tmp_path: Path) -> None:
    env = base_env(**env_file(secured.keys / "auditor.env"))
    env.update(
        SISAS_NATS_URL=secured.server.url, SISAS_HOME=str(tmp_path / "cli-home"), SISAS_REPLICAS="1"
    )
    done = await sisas_async("replay", "verify", "--all", "--json", env=env)
    out, err = done.stdout, done.stderr
    verdict = json.loads(out) if out.strip() else {}
    ok = (
        done.returncode == 0
        and verdict.get("intact")
        and verdict.get("trusted_keys") == [secured.signing_public]
    )
    m.add(
        "auditor",
        "`sisas replay verify --all` from auditor.env",
        "allowed",
        "allowed" if ok else "refused",
        f"exit {done.returncode}, {verdict.get('runs')} runs intact, signatures required"
        if ok
        else f"exit {done.returncode}: {(err or out)[-200:]}",
    )


def _server_log(m: Matrix, s: Suite, secured: Secured) -> None:
    """Every refusal the server logged was provoked on purpose; sisas's own code paths
    caused none, except a reader's clean-up of the temporary consumer it read a range with
    (refused to read-only roles; the server reaps the consumer when idle)."""
    roles = {public: name for name, public in init_users(secured).items()}
    unexpected: dict[str, list[str]] = {}
    logged = secured.violations()
    missing = s.provoked - {(roles.get(u, u), kind, subj) for u, kind, subj in logged}
    m.add(
        "server",
        "logs every refusal provoked here",
        "allowed",
        "allowed" if not missing else "refused",
        f"{len(logged)} violations logged" if not missing else f"not logged: {sorted(missing)}",
    )
    for public, kind, subject in logged:
        role = roles.get(public, public)
        if (role, kind, subject) in s.provoked:
            continue
        if (
            role in ("operator", "auditor")
            and kind == "Publish"
            and subject.startswith("$JS.API.CONSUMER.DELETE.SISAS_LOG.sisas-read-")
        ):
            continue
        unexpected.setdefault(role, []).append(f"{kind} {subject}")
    for name in ("orchestrator", "operator", "worker", "auditor", "upstream"):
        extra = unexpected.get(name, [])
        m.add(
            name,
            "no other refusal in the server log",
            "allowed",
            "allowed" if not extra else "refused",
            "none" if not extra else "; ".join(sorted(set(extra)))[:200],
        )


def init_users(secured: Secured) -> dict[str, str]:
    """Role → public nkey, from the seeds on disk."""
    return {
        name: nkeys.from_seed(
            bytearray(secured.seed(name).read_bytes().strip())
        ).public_key.decode()
        for name in ("orchestrator", "operator", "worker", "auditor", "upstream")
    }


# -- the profile on disk, the docs, and SISAS_NATS_NKEY --------------------------------

DOC = ROOT / "docs" / "security.md"
BEGIN = "<!-- permissions: generated by `sisas security permissions`; a test checks it -->"
END = "<!-- /permissions -->"


def test_the_permissions_table_in_the_docs_is_the_one_the_server_gets() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} lost its generated table markers"
    between = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert between.strip() == permissions_markdown().strip(), (
        "docs/security.md's table differs from sisas/security/permissions.py: paste the output "
        "of `sisas security permissions` between the markers"
    )
    conf = auth_conf({r.name: f"U{r.name.upper()}" for r in ROLES}, [UPSTREAM])
    for r in ROLES:
        for subject in r.publish:
            wanted = UPSTREAM if subject == "<upstream subjects>" else subject
            assert json.dumps(wanted) in conf


def test_security_init_writes_private_keys_and_a_config_the_server_accepts(
    tmp_path: Path,
) -> None:
    out = tmp_path / "sec"
    first = sisas("security", "init", "--out", str(out), "--upstream", UPSTREAM, "--json")
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    kinds = {Path(f["path"]).name: f["kind"] for f in made["files"]}
    for r in ROLES:
        assert kinds[f"{r.name}.nk"] == "seed" and kinds[f"{r.name}.env"] == "env"
    assert kinds["auth.conf"] == "auth" and kinds["signing.nk"] == "signing"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in [f"{r.name}.nk" for r in ROLES] + ["signing.nk"]:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    env = {r.name: env_file(out / f"{r.name}.env") for r in ROLES}
    assert env["orchestrator"]["SISAS_SIGNING_KEY"] == str(out / "signing.nk")
    for name in ("orchestrator", "operator", "worker", "auditor"):
        assert env[name]["SISAS_TRUSTED_KEYS"] == made["signing_public_key"]
    for name in ("orchestrator", "operator", "worker", "auditor"):
        assert env[name]["SISAS_NATS_NKEY"] == str(out / f"{name}.nk")
    assert "SISAS_SIGNING_KEY" not in env["worker"] | env["operator"] | env["auditor"]
    (tmp_path / "server.conf").write_text('jetstream {}\ninclude "sec/auth.conf"\n')
    checked = subprocess.run(
        [str(find_binary()), "-t", "-c", str(tmp_path / "server.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    again = sisas("security", "init", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    forced = sisas("security", "init", "--out", str(out), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    replaced = json.loads(forced.stdout)
    assert replaced["signing_kept"] and replaced["signing_public_key"] == made["signing_public_key"]
    assert replaced["users"]["operator"] != made["users"]["operator"]
    assert "upstream" not in replaced["users"]  # no --upstream this time: no such user

    for bad, says in (("sisas.>", "could reach sisas"), ("a..b", "not a NATS subject")):
        refused = sisas("security", "init", "--out", str(tmp_path / "x"), "--upstream", bad)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr


async def test_sisas_nats_nkey_problems_are_named(secured: Secured, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"SISAS_NATS_NKEY names .*nope\.nk, which is not a file"):
        Settings.from_env({"SISAS_NATS_NKEY": str(tmp_path / "nope.nk")})
    creds = tmp_path / "user.creds"
    creds.write_text("x")
    with pytest.raises(UsageError, match="SISAS_NATS_CREDS and SISAS_NATS_NKEY"):
        Settings.from_env(
            {"SISAS_NATS_NKEY": str(secured.seed("worker")), "SISAS_NATS_CREDS": str(creds)}
        )
    garbage = tmp_path / "garbage.nk"
    garbage.write_text("not a seed\n")
    with pytest.raises(UsageError, match="not the seed of an nkey user"):
        async with open_bus(replace(secured.settings("worker"), nkey=garbage)):
            pass
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(user_seed())
    with pytest.raises(BusUnavailable, match=r"(?i)authorization.*SISAS_NATS_NKEY"):
        async with open_bus(replace(secured.settings("worker"), nkey=stranger)):
            pass
