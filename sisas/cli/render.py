"""How signals and log records look in a terminal and in ``--json`` output."""

from __future__ import annotations

from typing import Any

import msgspec
from rich.table import Table
from rich.text import Text

from sisas.signals import (
    ChainIssue,
    ContractChecked,
    CorruptMessage,
    InvariantChecked,
    LogGap,
    LogRecord,
    PhaseCompleted,
    PhaseFailed,
    Signal,
    StoredSignal,
)

__all__ = ["KIND_STYLE", "record_json", "record_line", "signal_summary", "signals_table"]

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


def signal_summary(signal: Signal) -> str:
    """One short line saying what the body holds."""
    body = signal.body
    if isinstance(body, PhaseCompleted):
        return f"{body.output_digest[:19]}… in {body.duration:.3f}s"
    if isinstance(body, PhaseFailed):
        kept = (
            f" (output quarantined: {body.quarantined_artifact[:19]}…)"
            if body.quarantined_artifact
            else ""
        )
        return f"{body.error.kind}: {body.error.message}{kept}"
    if isinstance(body, ContractChecked):
        verdict = "passed" if body.passed else f"FAILED ({len(body.violations)} violations)"
        return f"{body.boundary} {body.contract} {verdict}"
    if isinstance(body, InvariantChecked):
        verdict = "passed" if body.passed else "FAILED"
        return f"{body.invariant} {verdict} (observed {body.observed!r})"
    fields = msgspec.structs.asdict(body)
    return ", ".join(f"{k}={v!r}" for k, v in fields.items() if v not in ("", None, {}, [], 0))


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
