"""``sisas up``'s dashboard, served by a ``sisas dashboard`` process of its own.

The dashboard shares nothing with the orchestrator and the worker but the server: in
``sisas up``'s own process its page loads took the interpreter lock from them, so three
open run pages made a 5,000-item run 1.57x slower, where the same pages served by a
process apart made it 1.08-1.14x slower (docs/performance.md, "bench pages"). So ``up``
starts ``sisas dashboard`` beside it, once its handlers (the projector the dashboard
asks) are up, with the same environment and working folder (it finds the server as any
other sisas command does), relays what it prints at start, and stops it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sisas.cli.app import err_console
from sisas.errors import UsageError

__all__ = ["DashboardProcess", "dashboard_process"]

START_TIMEOUT = 60.0
"""Seconds the dashboard process has to say where it listens."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class DashboardProcess:
    """Where the dashboard listens, and what it says about actions and signing in."""

    url: str = ""
    actions: str = ""
    sign_in: str = ""
    pid: int = 0


@contextlib.asynccontextmanager
async def dashboard_process(
    *, port: int, allow_actions: bool, sign_in: bool, port_fix: str
) -> AsyncIterator[DashboardProcess]:
    """Run ``sisas dashboard --port PORT`` while inside the block. Raises
    :class:`UsageError` (ending with ``port_fix``) when it cannot listen there, and
    :class:`UsageError` with its own error when it stops before listening. ``sign_in``:
    it will print an operator sign-in address (actions on a server without users)."""
    args = [sys.executable, "-m", "sisas.cli", "dashboard", "--port", str(port)]
    args += ["--parent-pid", str(os.getpid())]  # it stops when up is gone, even by SIGKILL
    if allow_actions:
        args.append("--allow-actions")
    env = {**os.environ, "COLUMNS": "1000", "NO_COLOR": "1", "TERM": "dumb"}
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C at the terminal is up's to pass on
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    said = DashboardProcess(pid=proc.pid)
    relays: list[asyncio.Task[None]] = []
    try:
        try:
            await asyncio.wait_for(_started(proc.stdout, said, sign_in), START_TIMEOUT)
        except (TimeoutError, EOFError):
            problem = (await _rest(proc)).strip()
            if "cannot listen on" in problem:
                problem = problem.split("; pass --port", 1)[0]
                raise UsageError(f"{problem.removeprefix('error: ')}; {port_fix}") from None
            raise UsageError(
                "the dashboard process stopped before it listened"
                + (f": {problem.removeprefix('error: ')}" if problem else "")
                + "; run `sisas dashboard` alone to see why, or pass --no-dashboard"
            ) from None
        relays = [
            asyncio.create_task(_relay(proc.stdout)),
            asyncio.create_task(_relay(proc.stderr)),
        ]
        yield said
    finally:
        await _stop(proc)
        for task in relays:
            task.cancel()


async def _started(out: asyncio.StreamReader, said: DashboardProcess, sign_in: bool) -> None:
    """Read what ``sisas dashboard`` prints at start into ``said``."""
    while True:
        raw = await out.readline()
        if not raw:
            raise EOFError
        line = _ANSI.sub("", raw.decode(errors="replace")).strip()
        if line.startswith("dashboard on "):
            said.url = line.removeprefix("dashboard on ").split(" ", 1)[0]
        elif line.startswith("actions: "):
            said.actions = line.removeprefix("actions: ")
        elif line.startswith("operator sign-in: "):
            said.sign_in = line.removeprefix("operator sign-in: ")
        if said.url and said.actions and (said.sign_in or not sign_in):
            return


async def _rest(proc: asyncio.subprocess.Process) -> str:
    """What a dashboard process that did not start wrote to its stderr."""
    assert proc.stderr is not None
    with contextlib.suppress(ProcessLookupError):
        if proc.returncode is None:
            proc.kill()
    data = await proc.stderr.read()
    await proc.wait()
    return _ANSI.sub("", data.decode(errors="replace"))


async def _relay(stream: asyncio.StreamReader) -> None:
    """What the dashboard says later (warnings, errors) goes to up's stderr."""
    while raw := await stream.readline():
        line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
        if line and line != "stopped":
            err_console.print(f"dashboard: {line}", markup=False, highlight=False)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Ask the dashboard process to stop (SIGINT, as Ctrl-C); kill it after 10 s."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
