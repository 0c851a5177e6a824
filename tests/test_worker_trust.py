"""A worker with trusted keys runs only the work a trusted orchestrator signed.

On a real nats-server. The forgeries are appended the way someone holding the
orchestrator's NATS credentials but not its signing key would: well-formed
``phase_scheduled`` signals at the right place in their run's chain (the next seq, the
previous hash, the run's last subject sequence expected). Each test proves whether the
phase function ran by the marker file ``nap`` writes (tests/pipelines.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.client import Client
from sisas.client.verification import verify_log
from sisas.errors import AppendConflict, UsageError
from sisas.handlers.state import RunState, fold
from sisas.loader import load_pipelines
from sisas.security.keys import generate_seed, signer_from_file
from sisas.security.profile import init_profile
from sisas.services.orchestrator import REJECTED_SUBJECT, Orchestrator
from sisas.services.worker import Worker
from sisas.signals import (
    ENDING_KINDS,
    ChainHead,
    Draft,
    PhaseScheduled,
    Signal,
    StoredSignal,
    seal,
)
from sisas.signals.names import INPUT_STREAM
from sisas.signals.signing import check_signature
from tests.conftest import NatsServer
from tests.runs import TEST_PIPES


@dataclass
class Key:
    seed: Path
    public: str


def new_key(folder: Path, name: str) -> Key:
    folder.mkdir(parents=True, exist_ok=True)
    seed = folder / f"{name}.nk"
    seed.write_bytes(generate_seed() + b"\n")
    return Key(seed, signer_from_file(seed).public_key)


@dataclass
class Deployment:
    orch: Bus
    """The orchestrator's connection (the one the forger's stolen credentials give)."""
    worker: Worker
    markers: Path


@contextlib.asynccontextmanager
async def deployment(
    server: NatsServer, tmp: Path, *, signs_with: Key, trusts: str, beside: bool
) -> AsyncIterator[Deployment]:
    """An orchestrator signing with ``signs_with`` and a worker of the ``slow`` pipeline
    whose env has ``SISAS_TRUSTED_KEYS=trusts``: in one process (the worker hands its
    reports to the orchestrator, as in ``sisas up --pipelines``) or on two connections
    (reports through ``SISAS_IN``, as with ``sisas worker``)."""
    env = {"SISAS_NATS_URL": server.url, "SISAS_HOME": str(tmp / "home"), "SISAS_REPLICAS": "1"}
    signing = {"SISAS_SIGNING_KEY": str(signs_with.seed)}
    trusting = {"SISAS_TRUSTED_KEYS": trusts}
    pipes = load_pipelines([TEST_PIPES], entry_points=False)
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        if beside:
            obus = await stack.enter_async_context(
                open_bus(Settings.from_env({**env, **signing, **trusting}))
            )
            orch = Orchestrator(obus)
            worker = Worker(obus, {"slow": pipes["slow"]}, name="w", concurrency=2, local=orch)
        else:
            obus = await stack.enter_async_context(open_bus(Settings.from_env({**env, **signing})))
            wbus = await stack.enter_async_context(open_bus(Settings.from_env({**env, **trusting})))
            orch = Orchestrator(obus)
            worker = Worker(wbus, {"slow": pipes["slow"]}, name="w", concurrency=2)
        assert worker.trusted == frozenset(trusts.split())
        await worker.register()
        tasks = [asyncio.create_task(orch.run(stop)), asyncio.create_task(worker.run(stop))]
        try:
            yield Deployment(obus, worker, tmp / "markers")
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def start(d: Deployment, run_id: str, seconds: float = 0.01) -> Path:
    """Start a ``slow`` run whose ``nap`` writes a marker in a folder of its own."""
    marker = d.markers / run_id
    marker.mkdir(parents=True)
    data = json.dumps({"seconds": seconds, "marker_dir": str(marker)}).encode()
    await Client(d.orch).start("slow", input_bytes=data, seed=7, run_id=run_id, check_plan=False)
    return marker


async def wait_for(bus: Bus, run_id: str, kinds: Collection[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = await bus.log.last_of_run(run_id)
        if isinstance(last, StoredSignal) and last.signal.kind in kinds:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} has no {kinds} within {timeout}s")


async def signals_of(bus: Bus, run_id: str) -> list[Signal]:
    return [r.signal for r in await bus.log.read_run(run_id) if isinstance(r, StoredSignal)]


async def ended(bus: Bus, run_id: str) -> tuple[RunState, list[Signal]]:
    await wait_for(bus, run_id, ENDING_KINDS)
    signals = await signals_of(bus, run_id)
    return fold(signals), signals


async def forge(
    bus: Bus, run_id: str, marker: Path, *, attempt: int = 1, sig: str = ""
) -> tuple[Signal, int]:
    """Append a ``phase_scheduled`` of ``nap`` to ``run_id`` (a new run when it has no
    signals) whose input makes ``nap`` write into ``marker``; ``sig`` as given (none by
    default). Returns the signal and its stream sequence."""
    marker.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"seconds": 0, "marker_dir": str(marker)}).encode()
    digest = await bus.artifacts.put(data)
    for _ in range(20):
        records = await bus.log.read_run(run_id)
        signals = [r.signal for r in records if isinstance(r, StoredSignal)]
        head = (
            ChainHead.after(signals[-1]) if signals else ChainHead(pipeline="slow", run_id=run_id)
        )
        draft = Draft(
            body=PhaseScheduled(inputs={"input": digest}, seed=1),
            at=datetime.now(UTC),
            phase="nap",
            attempt=attempt,
        )
        forged = msgspec.structs.replace(seal(head, draft), sig=sig)
        try:
            result = await bus.log.append(
                [forged], expected_last_seq=records[-1].stream_seq if records else 0
            )
        except AppendConflict:
            continue
        await bus.work.offer([StoredSignal(stream_seq=result.last_seq, signal=forged)])
        return forged, result.last_seq
    raise AssertionError("could not append the forgery")


async def rejection(bus: Bus, after: int, timeout: float = 30) -> dict[str, object]:
    """The first rejection record on ``SISAS_IN`` past stream sequence ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # none yet
            msg = await bus.js.get_last_msg(INPUT_STREAM, REJECTED_SUBJECT)
            if msg.seq > after and msg.data:
                record: dict[str, object] = json.loads(msg.data)
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no rejection recorded within {timeout}s")


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sisas.worker" and r.levelno == logging.ERROR and "refused" in r.getMessage()
    ]


@pytest.mark.parametrize("beside", [False, True], ids=["sisas-worker", "sisas-up"])
async def test_a_trusting_worker_runs_signed_work_and_refuses_an_unsigned_schedule(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, beside: bool
) -> None:
    caplog.set_level(logging.ERROR, logger="sisas.worker")
    key = new_key(tmp_path / "keys", "signing")
    trusted = frozenset({key.public})
    async with deployment(
        nats_server, tmp_path, signs_with=key, trusts=key.public, beside=beside
    ) as d:
        # signed work runs
        marker = await start(d, "signed-1")
        state, signals = await ended(d.orch, "signed-1")
        assert state.status == "completed"
        assert all(check_signature(s, trusted).status == "valid" for s in signals)
        assert list(marker.iterdir()), "the signed nap did not run"

        # a forged schedule in a live run: nap's attempt 2, while attempt 1 runs
        await start(d, "live", seconds=1.5)
        await wait_for(d.orch, "live", ("phase_started",))
        attempt = max(s.attempt for s in await signals_of(d.orch, "live") if s.phase == "nap")
        forged, seq = await forge(d.orch, "live", tmp_path / "forged-live", attempt=attempt + 1)
        state, signals = await ended(d.orch, "live")
        assert not list((tmp_path / "forged-live").iterdir()), "the forged nap ran"
        assert state.status == "failed"
        failed = [s for s in signals if s.kind == "phase_failed" and s.attempt == forged.attempt]
        assert len(failed) == 1
        error = failed[0].body.error  # type: ignore[union-attr]
        assert error.retryable is False and error.detail == "signature unsigned"
        assert f"the worker w refused this attempt: phase_scheduled {forged.id}" in error.message
        assert "carries no signature" in error.message and "SISAS_SIGNING_KEY" in error.message
        after_forgery = [s for s in signals if s.seq > forged.seq]
        assert [s.kind for s in after_forgery][-1] == "run_failed"
        # the refusal is in the log, signed by the orchestrator, where an auditor reads it
        assert all(check_signature(s, trusted).status == "valid" for s in after_forgery)
        report = await verify_log(d.orch, "live", trusted=trusted, projection=False)
        assert report.first is not None and report.first.problem == "unsigned"
        assert report.first.stream_seq == seq
        logged = refusals(caplog)
        assert len(logged) == 1 and forged.id in logged[0] and f"log seq {seq}" in logged[0]
        assert "SISAS_TRUSTED_KEYS" in logged[0] and "sisas replay verify live" in logged[0]

        # a forged run: its first signal a schedule, at seq 1 after the genesis hash
        in_before = (await d.orch.js.stream_info(INPUT_STREAM)).state.last_seq
        forged, seq = await forge(d.orch, "forged-run", tmp_path / "forged-run")
        rejected = await rejection(d.orch, in_before)
        assert "run forged-run was never started" in str(rejected["reason"])
        assert not list((tmp_path / "forged-run").iterdir()), "the forged nap ran"
        assert [s.kind for s in await signals_of(d.orch, "forged-run")] == ["phase_scheduled"]
        report = await verify_log(d.orch, "forged-run", trusted=trusted, projection=False)
        assert report.first is not None and report.first.problem == "unsigned"

        # and the worker goes on with the next signed run
        marker = await start(d, "signed-2")
        state, _ = await ended(d.orch, "signed-2")
        assert state.status == "completed" and list(marker.iterdir())
        assert d.worker.refused == 2
        assert len(refusals(caplog)) == 2


async def test_a_schedule_whose_signature_does_not_verify_is_refused(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trusted key's signature copied from a genuine signal onto a forged one."""
    caplog.set_level(logging.ERROR, logger="sisas.worker")
    key = new_key(tmp_path / "keys", "signing")
    async with deployment(
        nats_server, tmp_path, signs_with=key, trusts=key.public, beside=False
    ) as d:
        await start(d, "signed-1")
        _, signals = await ended(d.orch, "signed-1")
        copied = signals[0].sig
        assert copied.startswith(key.public)
        in_before = (await d.orch.js.stream_info(INPUT_STREAM)).state.last_seq
        forged, seq = await forge(d.orch, "copied", tmp_path / "copied", sig=copied)
        rejected = await rejection(d.orch, in_before)
        assert "run copied was never started" in str(rejected["reason"])
        assert not list((tmp_path / "copied").iterdir()), "the forged nap ran"
        logged = refusals(caplog)
        assert len(logged) == 1 and forged.id in logged[0]
        assert "carries a signature that does not verify" in logged[0]
        assert d.worker.refused == 1
        report = await verify_log(
            d.orch, "copied", trusted=frozenset({key.public}), projection=False
        )
        assert report.first is not None and report.first.problem == "bad_signature"
        assert report.first.stream_seq == seq


async def test_work_signed_by_a_key_the_worker_does_not_trust_is_refused(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An orchestrator signing with another key (say, rotated without telling the
    workers): its runs fail at their first phase, with the key and the fix."""
    caplog.set_level(logging.ERROR, logger="sisas.worker")
    trusted, other = new_key(tmp_path / "keys", "trusted"), new_key(tmp_path / "keys", "other")
    async with deployment(
        nats_server, tmp_path, signs_with=other, trusts=trusted.public, beside=False
    ) as d:
        marker = await start(d, "other-1")
        state, signals = await ended(d.orch, "other-1")
        assert not list(marker.iterdir()), "nap ran under an untrusted signature"
        assert state.status == "failed" and state.phase("nap").status == "failed"
        [failed] = [s for s in signals if s.kind == "phase_failed"]
        error = failed.body.error  # type: ignore[union-attr]
        assert error.detail == f"signature untrusted by {other.public}"
        assert f"is signed by {other.public}, which is not in SISAS_TRUSTED_KEYS" in error.message
        assert "add it to the workers' SISAS_TRUSTED_KEYS" in error.message
        assert d.worker.refused == 1 and d.worker.completed == 0
        assert len(refusals(caplog)) == 1
        report = await verify_log(
            d.orch, "other-1", trusted=frozenset({trusted.public}), projection=False
        )
        assert report.first is not None and report.first.problem == "untrusted_signer"


async def test_without_trusted_keys_a_worker_runs_the_forgery(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The control: the same forgery, to a worker that requires nothing, is executed
    (what the tests above prove no longer happens when keys are trusted)."""
    key = new_key(tmp_path / "keys", "signing")
    async with deployment(nats_server, tmp_path, signs_with=key, trusts="", beside=False) as d:
        await forge(d.orch, "forged-run", tmp_path / "forged-run")
        deadline = time.monotonic() + 30
        while not list((tmp_path / "forged-run").iterdir()):
            assert time.monotonic() < deadline, "the forged nap did not run"
            await asyncio.sleep(0.05)
        assert d.worker.refused == 0


def test_trusted_keys_come_from_the_environment_and_security_init_sets_them(
    tmp_path: Path,
) -> None:
    key = new_key(tmp_path / "keys", "signing")
    other = new_key(tmp_path / "keys", "other")
    both = Settings.from_env({"SISAS_TRUSTED_KEYS": f" {key.public}  {other.public}\n"})
    assert both.trusted_keys == frozenset({key.public, other.public})
    assert Settings.from_env({}).trusted_keys == frozenset()
    bad = key.public[:-1] + ("A" if key.public[-1] != "A" else "B")
    for value, says in ((bad, "bad checksum"), ("nope", "not base32")):
        with pytest.raises(UsageError, match=f"SISAS_TRUSTED_KEYS: .*{says}.*sisas keys public"):
            Settings.from_env({"SISAS_TRUSTED_KEYS": f"{key.public} {value}"})
    seed = key.seed.read_text().strip()
    with pytest.raises(UsageError, match="holds an nkey seed, which is a secret") as refused:
        Settings.from_env({"SISAS_TRUSTED_KEYS": seed})
    assert seed[2:] not in str(refused.value) and seed[:12] not in str(refused.value)

    profile = init_profile(tmp_path / "sec")
    for role in ("orchestrator", "operator", "worker", "auditor"):
        text = (tmp_path / "sec" / f"{role}.env").read_text()
        line = f"export SISAS_TRUSTED_KEYS={profile.signing_public_key}"
        assert line in text.splitlines(), role
