"""What a phase prints goes to its attempt's log (:class:`~sisas.handlers.attempt_log.AttemptLog`).

- In a child process (an isolated phase), the attempt owns the process: ``sys.stdout``
  and ``sys.stderr`` are replaced for the attempt's duration (:func:`captured_output`),
  so the phase's own threads are captured too.
- In the worker, attempts share the process, each in a thread of its own: the streams
  are replaced once by routers that send what a registered thread writes to its
  attempt's log (:func:`routed_output`). Either way the text is kept there and not
  echoed on the process's stream: the attempt's log is where it is read (``sisas logs``),
  and a worker's or a ``run --wait``'s own output stays its own. ``ctx.log`` records
  still reach the process's logging handlers as any logger's do.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from sisas.handlers.attempt_log import AttemptLog, logging_now

__all__ = ["captured_output", "routed_output"]


class _Tee:
    """A text stream that keeps what is written in an attempt's log (what a logging
    handler writes goes on to ``original``)."""

    def __init__(self, original: TextIO, name: str, log: AttemptLog) -> None:
        self._original = original
        self._name = name
        self._log = log

    def write(self, data: str) -> int:
        if logging_now():  # a logging handler writing the record: the process's output
            with contextlib.suppress(Exception):
                self._original.write(data)
        else:
            self._log.write(self._name, data)
        return len(data)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def captured_output(log: AttemptLog) -> Iterator[None]:
    """Everything written to stdout and stderr inside goes to ``log`` instead."""
    out, err = sys.stdout, sys.stderr
    sys.stdout = _Tee(out, "stdout", log)
    sys.stderr = _Tee(err, "stderr", log)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        log.flush()


_logs: dict[int, AttemptLog] = {}
_install = threading.Lock()


class _Router:
    """Stands for a process stream: a registered thread's writes go to its log."""

    def __init__(self, original: TextIO, name: str) -> None:
        self._original = original
        self._name = name

    def write(self, data: str) -> int:
        log = _logs.get(threading.get_ident())
        if log is not None and not logging_now():
            log.write(self._name, data)
            return len(data)
        return self._original.write(data)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def routed_output(log: AttemptLog) -> Iterator[None]:
    """What this thread writes to stdout and stderr inside goes to ``log`` instead."""
    with _install:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr, "stderr")
    me = threading.get_ident()
    _logs[me] = log
    try:
        yield
    finally:
        _logs.pop(me, None)
        log.flush()
