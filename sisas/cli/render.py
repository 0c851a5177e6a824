"""How signals and log records look in a terminal and in ``--json`` output."""

from __future__ import annotations

from typing import Any

import msgspec
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
    "KIND_STYLE",
    "STATUS_STYLE",
    "record_json",
    "record_line",
    "signal_summary",
    "signals_table",
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


def signals_table(records: list[StoredSignal | CorruptMessage], title: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("stream", "seq", "at", "phase", "kind", "try", "detail", "hash"):
        table.add_column(col, no_wrap=col != "detail")
    for rec in records:
        if isinstance(rec, CorruptMessage):
            table.add_row(
                str(rec.stream_seq),
                "?",
                "",
                "",
                Text("CORRUPT", "bold red"),
                "",
                Text(rec.reason, "red"),
                "",
            )
            continue
        s = rec.signal
        table.add_row(
            str(rec.stream_seq),
            str(s.seq),
            s.at.strftime("%H:%M:%S.%f")[:-3],
            s.phase or "-",
            Text(s.kind, KIND_STYLE.get(s.kind, "")),
            str(s.attempt),
            signal_summary(s),
            s.hash[:10],
        )
    return table


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
    line.append(f"  {signal_summary(s)}", "dim")
    return line


def record_json(rec: LogRecord) -> dict[str, Any]:
    """A record as plain JSON data: ``signal`` exactly as on the wire, or the problem."""
    if isinstance(rec, LogGap):
        return {"gap": {"first": rec.first, "last": rec.last}}
    if isinstance(rec, CorruptMessage):
        return {"stream_seq": rec.stream_seq, "subject": rec.subject, "error": rec.reason}
    return {"stream_seq": rec.stream_seq, "signal": msgspec.to_builtins(rec.signal)}


def issue_json(issue: ChainIssue) -> dict[str, Any]:
    return {"seq": issue.seq, "problem": issue.problem, "message": issue.message}
