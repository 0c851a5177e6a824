"""The click application object and the plumbing every command shares."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console

from sisas import __version__
from sisas.bus.settings import Settings
from sisas.errors import SisasError

__all__ = ["cli", "console", "err_console", "fail", "load_settings", "run_async"]

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SisasError as exc:
        fail(str(exc), exc.exit_code)


def run_async(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Run an async command; map sisas errors to their exit codes, Ctrl-C to 130."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except SisasError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="sisas")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
def cli(verbose: int) -> None:
    """sisas: run multi-phase pipelines whose every step is an immutable, hash-chained signal.

    \b
    With no configuration sisas starts its own nats-server, keeping its data in ./.sisas
    (or SISAS_HOME). Set SISAS_NATS_URL to use a NATS server or cluster instead.

    \b
    Start here:
      sisas up                 keep a server running (Ctrl-C stops it)
      sisas signals RUN_ID     a run's signals, in order, with the chain verified
      sisas tail               follow the whole log live
      sisas status             where the server is, what the streams hold

    Every command takes --help. Exit codes: 0 ok, 1 failed, 2 usage or input error.
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose == 0:
        # Commands render bad messages themselves; the bus would repeat them.
        logging.getLogger("sisas.bus").setLevel(logging.ERROR)
