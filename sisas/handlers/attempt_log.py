"""An attempt's log: what a phase wrote (``ctx.log``, and print or stderr where the shell
routes them here), kept within limits and stored by digest.

Lines carry their offset from the attempt's start on the clock the shell passes in (no
wall clock here), the stream or level, and the text::

    +0.000s INFO loaded 1,204 rows
    +0.153s stdout progress: 50%
    +0.310s ERROR could not reach the API (attempt 0)

Bounded: the first :data:`HEAD` and the last :data:`TAIL` lines are kept (the start
says what ran, the end why it stopped), each cut at :data:`LINE_CHARS` characters; the
number of lines dropped between them is recorded, both in the log (one line saying
so) and in the outcome signal (``log_dropped``), beside ``log_lines``, the lines the
attempt wrote in all.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Final

__all__ = ["HEAD", "LINE_CHARS", "TAIL", "AttemptLog", "PhaseLogger", "logging_now"]

HEAD: Final = 500
TAIL: Final = 500
LINE_CHARS: Final = 2000


class AttemptLog:
    """The lines of one attempt. Thread-safe: a phase may log from its own threads.

    ``sink``: called with each line as it is written (a child process forwards its lines
    to the worker as they come, so a child killed past its timeout loses none)."""

    def __init__(
        self, clock: Callable[[], float], *, sink: Callable[[str], None] | None = None
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._sink = sink
        self._lock = threading.Lock()
        self._head: list[str] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL)
        self.lines = 0
        """Lines written in all (kept or not)."""
        self._partial: dict[str, str] = {}

    @property
    def dropped(self) -> int:
        """Lines written and not kept (between the head and the tail)."""
        return max(0, self.lines - HEAD - TAIL)

    def add(self, where: str, text: str) -> None:
        """Keep ``text`` (one or more lines) as written to ``where`` (a level or a stream)."""
        offset = self._clock() - self._start
        for part in text.rstrip("\n").split("\n") or [""]:
            line = f"+{offset:.3f}s {where} {part}"
            if len(line) > LINE_CHARS:
                line = line[:LINE_CHARS] + f"… ({len(line) - LINE_CHARS} more characters)"
            self.add_line(line)

    def add_line(self, line: str) -> None:
        """Keep one formatted line (as :meth:`add` made it, here or in a child)."""
        with self._lock:
            self.lines += 1
            if len(self._head) < HEAD:
                self._head.append(line)
            else:
                self._tail.append(line)
        if self._sink is not None:
            self._sink(line)

    def write(self, stream: str, data: str) -> None:
        """Text written to ``stream`` (stdout, stderr): kept line by line, a line that
        is not finished yet waits for its end (or :meth:`flush`)."""
        with self._lock:
            pending = self._partial.pop(stream, "") + data
        *complete, rest = pending.split("\n")
        for line in complete:
            self.add(stream, line)
        if rest:
            with self._lock:
                self._partial[stream] = rest

    def flush(self) -> None:
        """Keep what was written to a stream without an ending newline."""
        with self._lock:
            pending, self._partial = self._partial, {}
        for stream, rest in pending.items():
            self.add(stream, rest)

    def render(self) -> bytes:
        """The kept lines as UTF-8 text, with one line saying how many were dropped."""
        self.flush()
        with self._lock:
            lines = list(self._head)
            if self.dropped:
                lines.append(
                    f"… {self.dropped} lines dropped (an attempt keeps its first {HEAD} "
                    f"and last {TAIL} lines) …"
                )
            lines.extend(self._tail)
        return ("\n".join(lines) + "\n").encode() if lines else b""


class PhaseLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.log``: a logger whose records at INFO and above are also kept in the
    attempt's log (then go on to the process's handlers, as any logger's do)."""

    def __init__(
        self, logger: logging.Logger, extra: dict[str, object], attempt: AttemptLog | None
    ) -> None:
        super().__init__(logger, extra)
        self.attempt = attempt

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.attempt is not None and level >= logging.INFO:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            exc_info = kwargs.get("exc_info")
            if exc_info:
                if isinstance(exc_info, BaseException):
                    exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
                elif not isinstance(exc_info, tuple):
                    exc_info = sys.exc_info()
                if exc_info[0] is not None:
                    text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
            self.attempt.add(logging.getLevelName(level), text)
        _logging.on = True  # what handlers print now is this record again: not kept twice
        try:
            super().log(level, msg, *args, **kwargs)
        finally:
            _logging.on = False


_logging = threading.local()


def logging_now() -> bool:
    """Whether this thread is inside ``ctx.log`` (its handlers writing the record out)."""
    return bool(getattr(_logging, "on", False))
