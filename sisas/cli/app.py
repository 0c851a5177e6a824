"""The click application object and the plumbing every command shares."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.text import Text

from sisas import __version__
from sisas.bus.settings import Settings
from sisas.errors import SisasError
from sisas.telemetry.session import telemetry_session

__all__ = [
    "cli",
    "console",
    "err_console",
    "fail",
    "load_settings",
    "run_async",
    "stop_on_signals",
]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``. The message is plain
    text, never read as markup (``[[schedule]]`` stays whole)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))
    sys.exit(code)


def stop_on_signals() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM: what a long-running command runs until."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SisasError as exc:
        fail(str(exc), exc.exit_code)


def run_async(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run an async command; map sisas errors to their exit codes, Ctrl-C to 130."""

    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        # SIGTERM and SIGHUP (a closed terminal) cancel the command like Ctrl-C does, so
        # every `async with` unwinds: a server this command started is stopped, never
        # left running behind the user's back.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        return await fn(*args, **kwargs)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        ctx = click.get_current_context(silent=True)
        role = ctx.info_name if ctx is not None and ctx.info_name else "cli"
        try:
            with telemetry_session(role):  # the OTEL_* variables; flushed on the way out
                return asyncio.run(guarded(*args, **kwargs))
        except SisasError as exc:
            fail(str(exc), exc.exit_code)
        except (KeyboardInterrupt, asyncio.CancelledError):
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


class _Sisas(click.Group):
    """The root group: a :class:`SisasError` from any command, sync or async, is one
    line on stderr and its exit code (2 for usage errors), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        # Subcommands run inside this call, so every command (and group) is covered:
        # run_async maps errors of async commands itself, this catches the sync ones.
        try:
            return super().invoke(ctx)
        except SisasError as exc:
            fail(str(exc), exc.exit_code)


@click.group(
    cls=_Sisas,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", "-V", prog_name="sisas")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
def cli(verbose: int) -> None:
    """sisas: run multi-phase pipelines whose every step is an immutable, hash-chained signal.

    \b
    With no configuration sisas starts its own nats-server, keeping its data in ./.sisas
    (or SISAS_HOME). Set SISAS_NATS_URL to use a NATS server or cluster instead.

    \b
    Start here:
      sisas demo               run the example pipeline, see what the log holds
      sisas run PIPELINE       start a run (--wait to follow it, --json for scripts)
      sisas up                 keep a server, an orchestrator and a worker running
      sisas down               stop what `sisas up` started for this data folder
      sisas signals RUN_ID     a run's signals, in order, with the chain verified
      sisas tail               follow the whole log live
      sisas status             where the server is, what the streams hold

    Commands that need a server use the one `sisas up` started for the data folder, or
    start one for their own duration.

    Every command takes --help. Exit codes: 0 ok, 1 failed, 2 usage or input error.
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose == 0:
        # Commands render bad messages themselves; the bus would repeat them.
        logging.getLogger("sisas.bus").setLevel(logging.ERROR)
