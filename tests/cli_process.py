"""Running the `sisas` command from tests: as a user would, in its own process, with
its output collected (also from async tests whose event loop serves handlers meanwhile)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
SISAS = [sys.executable, "-m", "sisas.cli"]
EXAMPLE = str(ROOT / "examples" / "clustering.py")
POINTS = str(ROOT / "examples" / "data" / "points.json")
TEST_PIPES = str(ROOT / "tests" / "pipelines.py")
PATIENCE = 45.0
"""Seconds a test waits for something that takes well under one when all is right."""


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SISAS_")}
    return {**env, "COLUMNS": "200", **extra}


def fresh_env(tmp_path: Path, columns: int = 200) -> dict[str, str]:
    """No server at all: each command starts the embedded one for its own duration."""
    return base_env(SISAS_HOME=str(tmp_path / "home"), COLUMNS=str(columns))


def sisas(
    *args: str, env: dict[str, str], timeout: float = PATIENCE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SISAS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


class Command:
    """A `sisas` process run from an async test (the test's event loop keeps serving the
    handlers it hosts meanwhile), its output collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""
        self.err = ""
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, "out")),
            asyncio.create_task(self._read(proc.stderr, "err")),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Command:
        proc = await asyncio.create_subprocess_exec(
            *SISAS, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader, which: str) -> None:
        while chunk := await stream.read(4096):
            setattr(self, which, getattr(self, which) + chunk.decode())

    async def until(self, text: str) -> None:
        """Wait until ``text`` is in the output (the process must not end first)."""
        deadline = time.monotonic() + PATIENCE
        while text not in self.out + self.err:
            assert self.proc.returncode is None, f"ended first:\n{self.out}\n{self.err}"
            assert time.monotonic() < deadline, f"never said {text!r}:\n{self.out}\n{self.err}"
            await asyncio.sleep(0.05)

    async def finish(self) -> int:
        try:
            code = await asyncio.wait_for(self.proc.wait(), PATIENCE)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"still running:\n{self.out}\n{self.err}") from None
        await asyncio.gather(*self._readers)
        return code


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    cmd = await Command.start(*args, env=env)
    code = await cmd.finish()
    return code, cmd.out, cmd.err


def last_json(out: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result
