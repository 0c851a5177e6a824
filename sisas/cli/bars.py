"""Progress bars on stderr for long reads (catching up, rebuilding, verifying)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sisas.cli.app import err_console

__all__ = ["OnProgress", "progress_bar"]

OnProgress = Callable[[str, int, int], None]
"""(what, done, total): the bar shows ``what`` at ``done`` of ``total``."""


@contextlib.contextmanager
def progress_bar() -> Iterator[OnProgress]:
    """A callback that moves one bar on stderr; silent when stderr is not a terminal."""
    if not err_console.is_terminal:
        yield lambda what, done, total: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = None

        def update(what: str, done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(what, total=max(total, 1))
            bar.update(task, description=what, completed=done, total=max(total, 1))

        yield update
