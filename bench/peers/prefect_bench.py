"""Prefect 3: wall time of one flow run of 7 chained no-op tasks, run in this process.

Runs inside the prefect venv. No server is configured (``PREFECT_API_URL`` unset), so Prefect
starts its ephemeral local API server (a subprocess, SQLite under a temporary ``PREFECT_HOME``)
on the first flow run, which is untimed (reported as ``first_run_ms``). Analytics, UI and
logging are off. Measured per run: calling the flow until it returns. Two variants:

* ``flow_7_tasks``: Prefect's defaults, runs back to back. Each flow run ends by joining its
  heartbeat thread, which sleeps in 1 s slices, so a run takes at least ~1 s.
* ``flow_7_tasks_no_heartbeat_idle``: flow heartbeats off, and an untimed 1 s pause before each
  run so the ephemeral server's background writers are idle (back to back, its SQLite returns
  "busy" and the client retries after ~2 s). The engine's own cost per run.

With ``--fanout N`` (Prefect's defaults, heartbeats on): a flow whose first task returns N
items, ``each.map(items)`` (one task run per item, submitted to the flow's default
``ThreadPoolTaskRunner``), and a reducing task given the N futures. Per item Prefect
creates a task run, runs it in a pool thread and sends its state changes (pending,
running, completed) as events to the ephemeral server, which writes the task run's row
and states to its SQLite database. Measured per run: calling the flow until it returns.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import tempfile
import time
import warnings

from _common import (
    FANOUT_WARMUP_ITEMS,
    STEPS,
    emit,
    emit_fanout,
    parse_args,
    progress,
    time_runs,
)

_SETTINGS = {
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_INTERNAL_LOGGING_LEVEL": "CRITICAL",
    "DO_NOT_TRACK": "1",
    # On the loaded shared machine the ephemeral server sometimes took longer than the
    # default 20 s to answer (untimed start-up; the run then failed).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
IDLE_PAUSE_S = 1.0


def configure(home: str) -> None:
    """Point Prefect at an empty home with no API URL; must run before ``import prefect``."""
    for key in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[key]
    os.environ["PREFECT_HOME"] = home
    os.environ.update(_SETTINGS)


def main() -> None:
    args = parse_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="prefect-home-") as home:
        configure(home)
        warnings.filterwarnings("ignore")
        from prefect import flow, task
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        logging.getLogger("prefect").setLevel(logging.CRITICAL)

        @task
        def step(x: int) -> int:
            return x

        @flow
        def chain7() -> int:
            x = 0
            for _ in range(STEPS):
                x = step(x)
            return x

        @task
        def spread(n: int) -> list[int]:
            return list(range(n))

        @task
        def total(xs: list[int]) -> int:
            return len(xs)

        @flow
        def fan(n: int) -> int:
            futures = step.map(spread(n))
            return total(futures)

        version = importlib.metadata.version("prefect")
        t0 = time.perf_counter()
        chain7()  # starts the ephemeral server and creates its database
        first_ms = round((time.perf_counter() - t0) * 1000.0, 1)

        if args.runs:
            times = time_runs(chain7, args.runs, max(args.warmup - 1, 0))
            emit("prefect", "flow_7_tasks", version, times, first_run_ms=first_ms)

            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                times = time_runs(chain7, args.runs, args.warmup, pause_s=IDLE_PAUSE_S)
            emit("prefect", "flow_7_tasks_no_heartbeat_idle", version, times, first_run_ms=first_ms)

        for n in args.fanout:
            progress("prefect", "fanout_map", n)
            fan(FANOUT_WARMUP_ITEMS)

            def one(n: int = n) -> object:
                if fan(n) != n:
                    raise RuntimeError("prefect fan-out lost items")
                return n

            times = time_runs(one, args.fanout_runs, 0)
            emit_fanout("prefect", "fanout_map", version, n, times)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
