"""The threads a worker runs phases in: started once, reused, never waited for.

A phase that is not isolated runs in a thread of the worker's process, so the event loop
keeps taking work and heartbeating while it computes. Starting a thread per attempt
cost more than the attempt of a small phase: ``Thread.start`` waits until the new thread
holds the GIL, which on a busy event loop was 0.5-0.9 ms of a 7-phase run's ~3 ms per
phase (docs/performance.md, "Threads for phases").

:class:`PhaseThreads` keeps the threads that finished an attempt waiting for the next
one. It differs from :class:`concurrent.futures.ThreadPoolExecutor` where an
orchestrator's worker needs it to:

- **never bounded, never blocked**: an attempt whose run was cancelled is abandoned, not
  killed (Python cannot stop a thread), and may run on for as long as it likes. It keeps
  its thread; the next attempt gets an idle thread or a new one, so a stuck phase never
  holds up another;
- **daemon threads, never joined**: an abandoned attempt never keeps the process from
  exiting (the executor's threads are joined at exit, however long a phase sleeps);
- **a fresh context per attempt**: each job runs in an empty :class:`contextvars.Context`,
  as in a new thread, so nothing one attempt set is seen by the next;
- threads idle for ``idle_timeout`` seconds end, so a burst of parallel attempts does not
  leave its threads behind.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["PhaseThreads"]

log = logging.getLogger("sisas.worker")

Job = Callable[[], None]


class PhaseThreads:
    """Runs each job in an idle thread of its own, or in a new one when none is idle."""

    def __init__(self, *, name: str = "sisas-phase", idle_timeout: float = 30.0) -> None:
        self._name = name
        self._idle_timeout = idle_timeout
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.started = 0
        """Threads started so far (a test and the bench read it)."""

    @property
    def idle(self) -> int:
        """Threads waiting for a job."""
        with self._lock:
            return self._idle

    def submit(self, job: Job) -> None:
        """Run ``job`` at once in a thread of its own. ``job`` is expected to catch its
        own exceptions (one that escapes is logged and the thread goes on)."""
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread is promised this job
                self._jobs.put(job)
                return
            self.started += 1
            number = self.started
        thread = threading.Thread(
            target=self._serve, args=(job,), name=f"{self._name}-{number}", daemon=True
        )
        thread.start()

    def _serve(self, job: Job) -> None:
        while True:
            try:
                contextvars.Context().run(job)
            except BaseException:  # a job's own bug: never lose the thread silently
                log.exception("a phase thread's job raised")
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self._idle_timeout)
            except queue.Empty:
                with self._lock:
                    # A job put while we timed out was promised to an idle thread, and
                    # jobs are put under this lock: take it rather than leave it waiting.
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return
