"""How signals, log records and tables look in a terminal and in ``--json`` output.

Tables fit the console's width (a terminal's, or ``COLUMNS``, or 80 when piped) by
dropping their least important columns first, never by cutting the ones a reader copies
(run ids) or reads first (status): :func:`fit_table`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from sisas.signals import (
    ChainIssue,
    CorruptMessage,
    LogGap,
    LogRecord,
    StoredSignal,
)
from sisas.signals.summary import signal_summary

__all__ = [
    "ALWAYS",
    "KIND_STYLE",
    "STATUS_STYLE",
    "Column",
    "dropped_note",
    "fit_table",
    "record_json",
    "record_line",
    "signal_summary",
    "signals_table",
    "status_text",
    "traceback_tail",
]

STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "scheduled": "cyan",
    "retrying": "yellow",
    "skipped": "dim",
    "pending": "dim",
}
"""How a run's or a phase's status is coloured in the terminal."""

KIND_STYLE = {
    "run_completed": "bold green",
    "phase_completed": "green",
    "run_failed": "bold red",
    "phase_failed": "red",
    "phase_timed_out": "red",
    "run_cancelled": "yellow",
    "phase_skipped": "dim",
    "phase_retry_scheduled": "yellow",
}

ALWAYS = 1_000
"""The ``keep`` of a column that is never dropped."""

_GAP = 3
"""Characters between two columns of a :func:`fit_table` table (padding, rule, padding)."""


def command_name() -> str:
    """How the user types sisas again, for the commands a hint prints.

    ``./dev`` sets ``SISAS_PROG`` to how it was called (``./dev``), since it puts no
    ``sisas`` on PATH; else ``sisas`` when it is on PATH, else the path this process was
    started by (``.venv/bin/sisas``), else ``sisas``.
    """
    prog = os.environ.get("SISAS_PROG", "")
    if prog:
        return prog if "/" in prog or shutil.which(prog) else f"./{prog}"
    if shutil.which("sisas"):
        return "sisas"
    started = Path(sys.argv[0])
    if started.name == "sisas":
        relative = os.path.relpath(started)
        return relative if "/" in relative else f"./{relative}"
    return "sisas"


def duration_text(seconds: float | None) -> str:
    """``818 ms``, ``4.2 s``, or ``-``: every duration the CLI prints for a run or phase."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def status_text(status: str) -> Text:
    return Text(status, STATUS_STYLE.get(status, ""))


@dataclass(frozen=True)
class Column:
    """One column of a :func:`fit_table` table.

    ``keep``: when the table is too wide, columns are dropped lowest ``keep`` first;
    a column with :data:`ALWAYS` never is, and its cells are never cut (a value longer
    than the room left folds onto the next line, every character kept). ``wrap``: the
    column's text wraps at word boundaries, and it is given at least this many
    characters (0: it never wraps).
    """

    header: str
    keep: int = ALWAYS
    wrap: int = 0
    justify: Literal["left", "right"] = "left"


Cell = str | Text
"""A cell: plain text (never read as markup) or styled text."""


def _plan(
    columns: Sequence[Column], plain: Sequence[Sequence[str]], width: int
) -> tuple[list[int], set[int], Callable[[int], int], int]:
    """Which columns a table of ``plain`` cells keeps at ``width`` (see
    :func:`fit_table`), the empty ones it leaves out, each column's natural width, and
    the width needed."""
    widest = [
        max([len(col.header), *(cell_len(row[i]) for row in plain)])
        for i, col in enumerate(columns)
    ]

    def natural(i: int) -> int:
        col = columns[i]
        return min(widest[i], col.wrap) if col.wrap else widest[i]

    # A column with nothing in it says nothing: it goes first, and is not reported.
    empty = {
        i
        for i, col in enumerate(columns)
        if col.keep < ALWAYS and all(not row[i].strip() for row in plain)
    }
    kept = [i for i in range(len(columns)) if i not in empty]
    while True:
        need = sum(natural(i) for i in kept) + _GAP * (len(kept) - 1)
        droppable = [i for i in kept if columns[i].keep < ALWAYS]
        if need <= width or not droppable:
            break
        kept.remove(min(droppable, key=lambda i: (columns[i].keep, -i)))
    return kept, empty, natural, need


def fit_lines(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, width: int
) -> tuple[Text, list[str]]:
    """:func:`fit_table` for many rows: the same columns kept, as aligned lines (a
    header, a rule, one line a row) in one Text, at a small part of a table's cost; a
    wrapping column's cell is cut at its width with an ellipsis instead of wrapping, and
    a cell keeps one style (its own, as a styled cell has one here).
    Returns the text and the headers of dropped columns."""
    plain = [[c if isinstance(c, str) else c.plain for c in row] for row in rows]
    kept, empty, natural, _ = _plan(columns, plain, width)
    widths = {i: natural(i) for i in kept}
    room = width - sum(widths.values()) - _GAP * (len(kept) - 1)
    for i in kept:  # a wrapping column takes what room is left, at least its wrap width
        if columns[i].wrap:
            widths[i] = max(columns[i].wrap, widths[i] + max(room, 0))
    right = {i for i in kept if columns[i].justify == "right"}
    out = Text(no_wrap=True, overflow="ignore")
    gap = " " * _GAP

    def line(values: Sequence[str]) -> str:
        parts = []
        for i in kept:
            w, value = widths[i], values[i]
            if len(value) > w:
                value = value[: max(w - 1, 0)] + "…"
            parts.append(value.rjust(w) if i in right else value.ljust(w))
        return gap.join(parts)

    out.append(line([col.header for col in columns]) + "\n", "bold")
    out.append("─" * min(width, sum(widths.values()) + _GAP * (len(kept) - 1)) + "\n", "dim")
    styled = [i for i in kept if any(isinstance(row[i], Text) for row in rows[:1000])]
    offset = {i: sum(widths[k] + _GAP for k in kept[: kept.index(i)]) for i in kept}
    start = len(out.plain)
    for row, values in zip(rows, plain, strict=True):
        text = line(values)
        out.append(text + "\n")
        for i in styled:  # the style of a styled cell, over its place in the line
            c = row[i]
            if isinstance(c, Text) and c.style:
                at = start + offset[i] + (widths[i] - min(len(c.plain), widths[i])) * (i in right)
                out.stylize(c.style, at, at + min(len(c.plain), widths[i]))
        start += len(text) + 1
    dropped = [columns[i].header for i in range(len(columns)) if i not in kept and i not in empty]
    return out, dropped


def fit_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    width: int,
    title: str | None = None,
) -> tuple[Table, list[str]]:
    """A table of ``rows`` no wider than ``width``, and the headers of dropped columns.

    A droppable column whose cells are all empty is left out (and not reported). Then
    columns are dropped, lowest ``keep`` first, until the widest cell of every kept
    column (a wrapping column counted at its ``wrap`` width) fits. When even the columns
    kept :data:`ALWAYS` do not fit, their cells fold: every character stays visible.
    """
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    kept, empty, natural, need = _plan(columns, [[c.plain for c in row] for row in cells], width)
    # When the kept columns fit, only a wrapping column gives up room; when they cannot,
    # every column may fold (each character stays visible), none is cut with an ellipsis.
    squeezed = need > width
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        expand=False,
    )
    for i in kept:
        col = columns[i]
        table.add_column(
            col.header,
            justify=col.justify,
            no_wrap=not col.wrap and not squeezed,
            overflow="fold",
            min_width=min(col.wrap, natural(i)) if col.wrap else None,
        )
    for row in cells:
        table.add_row(*(row[i] for i in kept))
    dropped = [columns[i].header for i in range(len(columns)) if i not in kept and i not in empty]
    return table, dropped


def dropped_note(dropped: list[str], width: int) -> str:
    """A dim line naming the columns left out at this width (empty when none were)."""
    if not dropped:
        return ""
    return f"[dim]not shown at {width} columns: {', '.join(dropped)} (--json has all)[/]"


_SIGNAL_COLUMNS = (
    Column("seq", justify="right"),
    Column("at", keep=40),
    Column("phase"),
    Column("kind"),
    Column("try", keep=30, justify="right"),
    Column("detail", wrap=24),
    Column("stream", keep=20, justify="right"),
    Column("hash", keep=10),
)


BIG_RUN: Final = 2000
"""Past this many records, ``sisas signals`` prints aligned lines, not a table."""


def signals_table(
    records: list[StoredSignal | CorruptMessage], title: str, *, width: int
) -> tuple[Table | Text, list[str]]:
    """A run's records, one row each: what ``sisas signals`` prints (and what it left out).

    A corrupt message names its stream sequence in its detail, so that stays visible
    when the narrow terminal drops the ``stream`` column. Past :data:`BIG_RUN` records,
    the same columns as aligned lines (:func:`fit_lines`: a table of 50,000 rows took
    a minute to print, the lines take seconds).
    """
    rows = _signal_rows(records)
    if len(rows) > BIG_RUN:
        lines, dropped = fit_lines(_SIGNAL_COLUMNS, rows, width=width)
        return Text(title + "\n", "italic") + lines, dropped
    return fit_table(_SIGNAL_COLUMNS, rows, width=width, title=title)


def _signal_rows(records: list[StoredSignal | CorruptMessage]) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for rec in records:
        if isinstance(rec, CorruptMessage):
            rows.append(
                [
                    "?",
                    "",
                    "",
                    Text("CORRUPT", "bold red"),
                    "",
                    Text(f"stream seq {rec.stream_seq}: {rec.reason}", "red"),
                    str(rec.stream_seq),
                    "",
                ]
            )
            continue
        s = rec.signal
        rows.append(
            [
                str(s.seq),
                s.at.strftime("%H:%M:%S.%f")[:-3],
                s.phase or "-",
                Text(s.kind, KIND_STYLE.get(s.kind, "")),
                str(s.attempt),
                signal_summary(s),
                str(rec.stream_seq),
                s.hash[:10],
            ]
        )
    return rows


def record_line(rec: LogRecord) -> Text:
    """One line of ``sisas tail``."""
    if isinstance(rec, LogGap):
        return Text(f"GAP      stream seq {rec.first}..{rec.last} missing from the log", "bold red")
    if isinstance(rec, CorruptMessage):
        return Text(f"{rec.stream_seq:>8} CORRUPT on {rec.subject}: {rec.reason}", "bold red")
    s = rec.signal
    line = Text(f"{rec.stream_seq:>8} {s.at:%H:%M:%S} {s.pipeline}/{s.run_id} #{s.seq} ")
    line.append(f"{s.phase or '-'} ", "cyan")
    line.append(s.kind, KIND_STYLE.get(s.kind, "bold"))
    summary = signal_summary(s)
    if summary:
        line.append(f"  {summary}", "dim")
    return line


_RUNNER_FRAME = "sisas/handlers/execute.py"
"""The frame every phase is called from: it says nothing about the failure."""


def traceback_tail(detail: str, frames: int = 3) -> list[str]:
    """The last ``frames`` frames and the exception lines of a recorded traceback.

    ``detail`` is what a failed attempt recorded (``phase_failed.error.detail``): a
    Python traceback (of the last exception when several are chained), or a plain text,
    of which the last ``frames * 3`` lines are returned. The frame of sisas calling the
    phase is left out; a first line says how many other frames were.
    """
    lines = detail.rstrip().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call")]
    if not starts:
        return lines[-frames * 3 :]
    block = lines[starts[-1] + 1 :]
    heads = [i for i, ln in enumerate(block) if ln.startswith('  File "')]
    if not heads:
        return block
    end = next(
        (i for i, ln in enumerate(block) if i > heads[-1] and not ln.startswith(" ")),
        len(block),
    )
    spans = [block[h : (heads[k + 1] if k + 1 < len(heads) else end)] for k, h in enumerate(heads)]
    spans = [f for f in spans if _RUNNER_FRAME not in f[0].replace("\\", "/")]
    kept = spans[-frames:] if frames else []
    left_out = len(spans) - len(kept)
    note = [f"… {left_out} earlier frame{'s' if left_out != 1 else ''}"] if left_out else []
    return note + [ln for f in kept for ln in f] + block[end:]


def record_json(rec: LogRecord) -> dict[str, Any]:
    """A record as plain JSON data: ``signal`` exactly as on the wire, where it is stored
    (``stream_seq`` of its message, ``index`` in that message: a commit holds several),
    or the problem."""
    if isinstance(rec, LogGap):
        return {"gap": {"first": rec.first, "last": rec.last}}
    if isinstance(rec, CorruptMessage):
        return {"stream_seq": rec.stream_seq, "subject": rec.subject, "error": rec.reason}
    return {
        "stream_seq": rec.stream_seq,
        "index": rec.index,
        "signal": msgspec.to_builtins(rec.signal),
    }


def issue_json(issue: ChainIssue) -> dict[str, Any]:
    return {"seq": issue.seq, "problem": issue.problem, "message": issue.message}
