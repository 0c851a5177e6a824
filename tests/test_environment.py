"""Every run records the environment its code ran in; a rerun names what differs.

The distributions come from the pipeline's source (followed through the project's own
modules) and from sisas's requirements, never from what a process happened to import.
The end-to-end test records a run under one version of a distribution and reruns it,
in a CLI process, under another: the verdict names that distribution and its versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import pytest

from sisas.audit.bundle import read_records
from sisas.bus.runtime import Bus
from sisas.bus.settings import Settings
from sisas.environment import capture_environment, pipeline_distributions
from sisas.loader import load_pipelines
from sisas.replay.rerun import plan_rerun, verdict
from sisas.services.host import running_services
from sisas.signals.kinds import RunStarted
from sisas.signals.plan import Environment
from sisas.signals.records import StoredSignal
from tests.cli_process import SISAS, server_env, sisas_async
from tests.runs import EXAMPLE, GOLDEN, start, wait_end

PROJECT = """\
import {dist}

from helpers import tool
from sisas.pipeline import Context, Pipeline

probe = Pipeline("envprobe", version="1")


@probe.phase()
def measure(ctx: Context, input: dict[str, float]) -> float:
    return tool(sum(input.values())) * {dist}.FACTOR
"""

HELPERS = """\
from jsonschema import Draft202012Validator  # a distribution reached through a project module


def tool(x: float) -> float:
    return float(x) + (0 if Draft202012Validator else 1)
"""


def fake_distribution(root: Path, name: str, version: str, factor: int) -> Path:
    """A folder holding an importable package ``name`` and its metadata at ``version``
    (a real distribution as importlib.metadata sees one on sys.path)."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"FACTOR = {factor}\n")
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    (info / "RECORD").write_text(f"{name}/__init__.py,,\n")
    return root


def test_the_pipelines_distributions_are_what_its_code_and_sisas_import() -> None:
    pipe = load_pipelines([EXAMPLE], entry_points=False)["clustering"]
    found = pipeline_distributions(pipe)
    for name in ("sisas", "numpy", "pydantic", "pydantic-core", "msgspec", "nats-py"):
        assert found[name] == importlib.metadata.version(name), name
    # dev tools in the same venv that neither the pipeline nor sisas import are left out
    for name in ("pytest", "hypothesis", "mypy", "ruff", "selenium"):
        assert name not in found, name
    assert list(found) == sorted(found)
    env = capture_environment(pipe, nats_server="2.15.1")
    assert env.python == platform.python_version()
    assert env.implementation == platform.python_implementation()
    assert env.platform and env.nats_server == "2.15.1"


def test_project_modules_are_followed_to_the_distributions_they_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_distribution(tmp_path / "site", "envprobe", "1.0", factor=2)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "probe.py").write_text(PROJECT.format(dist="envprobe"))
    (tmp_path / "project" / "helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    importlib.invalidate_caches()
    sisas_modules = set(sys.modules)
    pipe = load_pipelines([str(tmp_path / "project" / "probe.py")], entry_points=False)["envprobe"]
    try:
        from sisas import environment

        environment._providers.cache_clear()
        found = pipeline_distributions(pipe)
    finally:
        for name in set(sys.modules) - sisas_modules:
            sys.modules.pop(name, None)
        environment._providers.cache_clear()
    assert found["envprobe"] == "1.0"
    assert found["jsonschema"] == importlib.metadata.version("jsonschema")  # via helpers.py
    assert "referencing" in found  # what jsonschema requires
    assert "helpers" not in found and "probe" not in found


def test_changes_name_each_difference_and_nothing_else() -> None:
    was = Environment(
        python="3.11.7",
        platform="Linux-6.1-x86_64",
        packages={"numpy": "2.3.1", "pandas": "2.2.0", "sisas": "0.1.0"},
        nats_server="2.15.1",
    )
    assert was.changes(was) == []
    now = Environment(
        python="3.12.1",
        platform="Linux-6.1-x86_64",
        packages={"numpy": "2.4.0", "sisas": "0.1.0", "pyarrow": "22.0.0"},
    )
    assert was.changes(now) == [
        "python CPython 3.11.7 -> CPython 3.12.1",
        "numpy 2.3.1 -> 2.4.0",
        "pandas 2.2.0 -> (not installed)",
        "pyarrow (not installed) -> 22.0.0",
    ]  # the server is unknown on one side (an offline rerun): not a difference


async def test_a_run_records_its_environment_and_a_rerun_names_the_package_that_differs(
    bus: Bus, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = fake_distribution(tmp_path / "v1", "envprobe", "1.0", factor=2)
    v2 = fake_distribution(tmp_path / "v2", "envprobe", "2.0", factor=3)
    project = tmp_path / "project"
    project.mkdir()
    (project / "probe.py").write_text(PROJECT.format(dist="envprobe"))
    (project / "helpers.py").write_text(HELPERS)
    code = str(project / "probe.py")
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(v1))
    monkeypatch.syspath_prepend(str(project))
    importlib.invalidate_caches()
    from sisas import environment

    environment._providers.cache_clear()
    try:
        pipes = load_pipelines([code], entry_points=False)
        async with running_services(bus, pipes, concurrency=1, projector=True):
            await start(bus, "envprobe", "e1", b'{"a": 1.5, "b": 2.5}')
            state, signals = await wait_end(bus, "e1")
    finally:
        for name in set(sys.modules) - before:
            sys.modules.pop(name, None)
        environment._providers.cache_clear()
    assert state.status == "completed"
    started = next(s.body for s in signals if isinstance(s.body, RunStarted))
    assert started.plan is not None and started.plan.environment is not None
    recorded = started.plan.environment
    assert recorded.packages["envprobe"] == "1.0"
    assert recorded.nats_server == bus.server_version != ""

    manifest = await sisas_async("manifest", "e1", env=server_env(settings))
    assert manifest.returncode == 0, manifest.stderr
    assert json.loads(manifest.stdout)["environment"]["packages"]["envprobe"] == "1.0"

    same = await sisas_async(
        "replay",
        "rerun",
        "e1",
        "--pipelines",
        code,
        "--json",
        env=server_env(settings, PYTHONPATH=f"{project}:{v1}"),
    )
    assert same.returncode == 0, same.stderr
    verdict = json.loads(same.stdout)
    assert verdict["deterministic"] and verdict["environment_changes"] == []

    other = await sisas_async(
        "replay",
        "rerun",
        "e1",
        "--pipelines",
        code,
        env=server_env(settings, PYTHONPATH=f"{project}:{v2}"),
    )
    text = other.stdout
    # envprobe 2.0 multiplies by 3: the output differs, and the verdict says what changed
    assert other.returncode == 1, text + other.stderr
    assert "NOT deterministic" in text
    assert "environment differs from the recorded one (1):" in text
    assert "envprobe 1.0 -> 2.0" in text


def test_a_rerun_of_a_run_recorded_before_environments_says_so() -> None:
    records = read_records(GOLDEN / "intact.jsonl")
    plan = plan_rerun([r.signal for r in records if isinstance(r, StoredSignal)])
    assert plan.environment is None
    v = verdict(plan, [], workers=1, current_environment=Environment(python="3.11.7"))
    assert v.recorded_environment is None and v.environment_changes == []


async def test_each_attempt_names_the_environment_it_ran_in(
    bus: Bus, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet of mixed workers: the plan was registered under envprobe 1.0, the phases
    ran on a worker with 2.0. Each phase_started names the worker's environment, so a
    rerun under 2.0 finds nothing changed (the plan's environment alone would claim
    `envprobe 1.0 -> 2.0`), and one under 1.0 names the change."""
    import asyncio
    import os
    import subprocess
    import sys

    from sisas.client import Client
    from sisas.services.worker import Worker

    v1 = fake_distribution(tmp_path / "v1", "envprobe", "1.0", factor=2)
    v2 = fake_distribution(tmp_path / "v2", "envprobe", "2.0", factor=2)
    project = tmp_path / "project"
    project.mkdir()
    (project / "probe.py").write_text(PROJECT.format(dist="envprobe"))
    (project / "helpers.py").write_text(HELPERS)
    code = str(project / "probe.py")
    env = {
        **os.environ,
        "SISAS_NATS_URL": settings.nats_url or "",
        "SISAS_HOME": str(settings.home),
        "SISAS_REPLICAS": "1",
        "PYTHONPATH": f"{project}:{v2}",
    }
    worker = subprocess.Popen(
        [*SISAS, "worker", "--pipelines", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    before = set(sys.modules)
    from sisas import environment

    try:
        from sisas.bus.presence import worker_live

        for _ in range(200):
            if await worker_live(bus.wire, "envprobe"):
                break
            await asyncio.sleep(0.05)
        monkeypatch.syspath_prepend(str(v1))
        monkeypatch.syspath_prepend(str(project))
        importlib.invalidate_caches()
        environment._providers.cache_clear()
        pipes = load_pipelines([code], entry_points=False)
        await Worker(bus, pipes).register()  # the plan now says envprobe 1.0
        async with running_services(bus, {}):  # an orchestrator only: B runs the phases
            handle = await Client(bus).start("envprobe", {"a": 1.0})
            result = await handle.result(timeout=60)
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
        for name in set(sys.modules) - before:
            sys.modules.pop(name, None)
        environment._providers.cache_clear()
    assert result.status == "completed"
    signals = [s async for s in handle.signals(follow=False)]
    started = next(s.body for s in signals if isinstance(s.body, RunStarted))
    assert started.plan is not None and started.plan.environment is not None
    assert started.plan.environment.packages["envprobe"] == "1.0"
    digests = {s.body.environment for s in signals if s.kind == "phase_started"}
    assert len(digests) == 1 and next(iter(digests)).startswith("sha256:")

    under_v2 = await sisas_async(
        "replay",
        "rerun",
        handle.run_id,
        "--pipelines",
        code,
        "--json",
        env=server_env(settings, PYTHONPATH=f"{project}:{v2}"),
    )
    verdict = json.loads(under_v2.stdout)
    assert verdict["environment_changes"] == [], verdict["environment_changes"]
    ran_in = list(verdict["attempt_environments"].values())
    assert [e["packages"]["envprobe"] for e in ran_in] == ["2.0"]
    under_v1 = await sisas_async(
        "replay",
        "rerun",
        handle.run_id,
        "--pipelines",
        code,
        "--json",
        env=server_env(settings, PYTHONPATH=f"{project}:{v1}"),
    )
    assert "envprobe 2.0 -> 1.0" in json.loads(under_v1.stdout)["environment_changes"]
