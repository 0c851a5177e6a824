"""Which data folder a command uses when SISAS_HOME is unset."""

from __future__ import annotations

import json
from pathlib import Path

from sisas.bus.settings import Settings, find_home
from tests.cli_process import sisas


def test_the_nearest_data_folder_up_the_tree_is_used_else_one_here(tmp_path: Path) -> None:
    project = tmp_path / "project"
    deeper = project / "examples" / "deeper"
    deeper.mkdir(parents=True)
    assert find_home(deeper) == deeper / ".sisas"  # none anywhere: a new one here
    (project / ".sisas").mkdir()
    assert find_home(deeper) == project / ".sisas"
    assert find_home(project) == project / ".sisas"
    (deeper / ".sisas").mkdir()
    assert find_home(deeper) == deeper / ".sisas"  # the nearest wins
    assert Settings.from_env({"SISAS_HOME": str(tmp_path / "x")}).home == tmp_path / "x"


def test_a_command_run_from_a_subfolder_sees_the_projects_data_folder(tmp_path: Path) -> None:
    """Before: `cd examples && sisas runs` started a new, empty ./.sisas there."""
    project = tmp_path / "project"
    sub = project / "examples"
    sub.mkdir(parents=True)

    def status(cwd: Path) -> dict[str, object]:
        out = sisas("status", "--json", cwd=cwd)  # no SISAS_HOME
        assert out.returncode == 0, out.stderr
        answer: dict[str, object] = json.loads(out.stdout)
        return answer

    assert status(project)["home"] == ".sisas"
    assert status(sub)["home"] == str(project / ".sisas")
    assert not (sub / ".sisas").exists()
