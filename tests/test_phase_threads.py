"""The worker's phase threads: reused, never blocked by a stuck attempt, never joined."""

from __future__ import annotations

import contextvars
import threading

from sisas.services.phase_threads import PhaseThreads

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="fresh")


def _run(threads: PhaseThreads, job: object) -> None:
    done = threading.Event()

    def wrapped() -> None:
        try:
            job()  # type: ignore[operator]
        finally:
            done.set()

    threads.submit(wrapped)
    assert done.wait(10)


def test_attempts_one_after_another_reuse_one_thread() -> None:
    threads = PhaseThreads()
    names: list[str] = []
    for _ in range(50):
        _run(threads, lambda: names.append(threading.current_thread().name))
    assert threads.started == 1
    assert set(names) == {"sisas-phase-1"}


def test_a_stuck_attempt_keeps_its_thread_and_the_next_gets_another() -> None:
    threads = PhaseThreads()
    release = threading.Event()
    stuck_started = threading.Event()

    def stuck() -> None:
        stuck_started.set()
        release.wait(30)

    threads.submit(stuck)
    assert stuck_started.wait(10)
    ran: list[bool] = []
    _run(threads, lambda: ran.append(threading.current_thread().daemon))
    assert ran == [True]  # a daemon thread: never joined at exit
    assert threads.started == 2
    release.set()


def test_each_attempt_starts_from_a_fresh_context() -> None:
    threads = PhaseThreads()
    seen: list[str] = []
    _run(threads, lambda: (seen.append(MARK.get()), MARK.set("set by the first")))
    _run(threads, lambda: seen.append(MARK.get()))
    assert threads.started == 1
    assert seen == ["fresh", "fresh"]


def test_a_job_that_raises_does_not_lose_the_thread() -> None:
    threads = PhaseThreads()

    def boom() -> None:
        raise RuntimeError("a bug in the job")

    threads.submit(boom)
    ran: list[int] = []
    _run(threads, lambda: ran.append(1))
    _run(threads, lambda: ran.append(2))
    assert ran == [1, 2]
    assert threads.started <= 2


def test_idle_threads_end_after_their_timeout_and_a_new_one_starts() -> None:
    threads = PhaseThreads(idle_timeout=0.05)
    _run(threads, lambda: None)
    ended = threading.Event()
    # Wait until the first thread has timed out (its idle count drops back to 0).
    for _ in range(400):
        if threads.idle == 0:
            ended.set()
            break
        threading.Event().wait(0.01)
    assert ended.is_set()
    _run(threads, lambda: None)
    assert threads.started == 2


def test_many_submitted_at_once_all_run() -> None:
    threads = PhaseThreads(idle_timeout=0.01)
    count = 0
    lock = threading.Lock()
    all_done = threading.Event()

    def job() -> None:
        nonlocal count
        with lock:
            count += 1
            if count == 2000:
                all_done.set()

    for _ in range(2000):
        threads.submit(job)
    assert all_done.wait(30)
