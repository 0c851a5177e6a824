"""`sisas cluster`: a three-node JetStream cluster on loopback, and the deploy/ configs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sisas.bus.embedded import find_binary
from tests.cli_process import fresh_env, sisas
from tests.runs import ROOT


@pytest.mark.parametrize("conf", sorted((ROOT / "deploy" / "nats").glob("*.conf")), ids=str)
def test_the_deploy_configs_are_valid_nats_server_configs(conf: Path) -> None:
    out = subprocess.run(
        [str(find_binary()), "-c", str(conf), "-t"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.timeout(180)
def test_cluster_up_status_kill_restart_down(tmp_path: Path) -> None:
    env = fresh_env(tmp_path)
    up = sisas("cluster", "up", "--nodes", "3", "--json", env=env)
    assert up.returncode == 0, up.stderr
    try:
        started = json.loads(up.stdout)
        assert [n["name"] for n in started["nodes"]] == ["n1", "n2", "n3"]
        again = sisas("cluster", "up", env=env)
        assert again.returncode == 2 and "already runs" in again.stderr
        # Every sisas command uses it once the printed variables are set.
        on = {**env, **started["env"]}
        status = sisas("status", "--json", env=on)
        assert status.returncode == 0, status.stderr
        streams = json.loads(status.stdout)["streams"]
        assert {s["replicas"] for s in streams.values()} == {3}
        cluster = json.loads(sisas("cluster", "status", "--json", env=env).stdout)
        assert all(n["running"] for n in cluster["nodes"])
        leader = cluster["leaders"]["SISAS_LOG"]
        assert leader in {"n1", "n2", "n3"}
        killed = sisas("cluster", "kill", "--leader", env=env)
        assert killed.returncode == 0 and f"killed {leader}" in killed.stdout
        cluster = json.loads(sisas("cluster", "status", "--json", env=env).stdout)
        assert [n["name"] for n in cluster["nodes"] if not n["running"]] == [leader]
        assert sisas("cluster", "restart", leader, env=env).returncode == 0
        cluster = json.loads(sisas("cluster", "status", "--json", env=env).stdout)
        assert all(n["running"] for n in cluster["nodes"])
    finally:
        down = sisas("cluster", "down", env=env)
    assert down.returncode == 0, down.stderr
    gone = sisas("cluster", "down", env=env)
    assert gone.returncode == 2 and "sisas cluster up" in gone.stderr
