"""Running the `sisas` command from tests: as a user would, in its own process, with
its output collected (also from async tests whose event loop serves handlers meanwhile).

Every test runs sisas through this module (tests/test_suite_layout.py checks that):

- :func:`sisas` runs a command to its end and blocks (a sync test, or a thread);
- :func:`sisas_async` does the same from an async test, whose event loop keeps serving
  the handlers the command talks to;
- :class:`Command` is a process an async test watches while it runs (``until``), signals
  and then ``finish``-es;
- :data:`SISAS` is the command line for a process a test starts, kills and reaps itself
  (``subprocess.Popen``).

Each takes the environment whole: :func:`base_env` (the test's own without its SISAS_*
and OTEL_* variables), :func:`fresh_env` (a data folder of its own, no server) or
:func:`server_env` (the server and data folder of a Settings), each with overrides.
Commands run in the repository's root unless told otherwise, with no stdin unless
given ``input``; one that outlives its ``timeout`` fails the test with what it printed.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sisas.bus.settings import Settings
from tests.runs import ROOT

SISAS = [sys.executable, "-m", "sisas.cli"]
PATIENCE = 45.0
"""Seconds a test waits for something that takes well under one when all is right."""
COMMAND_TIMEOUT = 60.0
"""Seconds a command may run unless told: as long as a whole test may (pytest's timeout
in pyproject.toml)."""


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without its SISAS_* and OTEL_* variables (a shell's
    settings must not reach the command under test), 200 columns wide, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SISAS_", "OTEL_"))}
    return {**env, "COLUMNS": "200", **extra}


def fresh_env(tmp_path: Path, columns: int = 200) -> dict[str, str]:
    """No server at all: each command starts the embedded one for its own duration."""
    return base_env(SISAS_HOME=str(tmp_path / "home"), COLUMNS=str(columns))


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The server and data folder ``settings`` name (SISAS_NATS_URL, SISAS_HOME,
    SISAS_REPLICAS), then ``extra`` (PYTHONPATH=…)."""
    return base_env(
        SISAS_NATS_URL=settings.nats_url or "",
        SISAS_HOME=str(settings.home),
        SISAS_REPLICAS=str(settings.replicas),
        **extra,
    )


def sisas(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str = ROOT,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``sisas ARGS`` run to its end (``env`` defaults to :func:`base_env`)."""
    try:
        return subprocess.run(
            [*SISAS, *args],
            env=dict(env) if env is not None else base_env(),
            cwd=cwd,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out, err = (_text(o) for o in (exc.stdout, exc.stderr))
        raise AssertionError(f"still running after {timeout} s: {args}\n{out}\n{err}") from None


async def sisas_async(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str = ROOT,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """:func:`sisas` without blocking the event loop (the services under test run in it)."""
    cmd = await Command.start(*args, env=env, cwd=cwd, input=input)
    code = await cmd.finish(timeout)
    return subprocess.CompletedProcess([*SISAS, *args], code, cmd.out, cmd.err)


class Command:
    """A `sisas` process run from an async test (the test's event loop keeps serving the
    handlers it hosts meanwhile), its output collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, input: str | None = None) -> None:
        self.proc = proc
        self.out = ""
        self.err = ""
        assert proc.stdout is not None and proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read(proc.stdout, "out")),
            asyncio.create_task(self._read(proc.stderr, "err")),
        ]
        if input is not None:
            self._tasks.append(asyncio.create_task(self._write(input)))

    @classmethod
    async def start(
        cls,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | str = ROOT,
        input: str | None = None,
        program: Sequence[str] = SISAS,
    ) -> Command:
        """Start ``program ARGS`` (``sisas`` unless told: tests/otel_child.py runs the
        same CLI with in-memory exporters)."""
        proc = await asyncio.create_subprocess_exec(
            *program,
            *args,
            env=dict(env) if env is not None else base_env(),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, input)

    async def _read(self, stream: asyncio.StreamReader, which: str) -> None:
        # Incremental: a character whose bytes straddle two reads is decoded whole.
        decoder = codecs.getincrementaldecoder("utf-8")()
        while chunk := await stream.read(4096):
            setattr(self, which, getattr(self, which) + decoder.decode(chunk))
        setattr(self, which, getattr(self, which) + decoder.decode(b"", final=True))

    async def _write(self, input: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(input.encode())
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):  # it ended without reading it all
            pass

    async def until(self, text: str) -> None:
        """Wait until ``text`` is in the output (the process must not end first)."""
        deadline = time.monotonic() + PATIENCE
        while text not in self.out + self.err:
            assert self.proc.returncode is None, f"ended first:\n{self.out}\n{self.err}"
            assert time.monotonic() < deadline, f"never said {text!r}:\n{self.out}\n{self.err}"
            await asyncio.sleep(0.05)

    async def finish(self, timeout: float = PATIENCE) -> int:
        """Its exit code once it ended and its output is read whole; killed, and the test
        failed with what it printed, if it runs past ``timeout`` seconds from now."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            raise AssertionError(f"still running:\n{self.out}\n{self.err}") from None
        await asyncio.gather(*self._tasks)
        return code


def last_json(out: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def _text(output: str | bytes | None) -> str:
    # TimeoutExpired carries bytes even from a text-mode run
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def env_file(path: Path) -> dict[str, str]:
    """The variables a shell gets from sourcing ``path`` (``export K=V`` lines)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = shlex.split(value)[0]
    return out
