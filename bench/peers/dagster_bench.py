"""Dagster: wall time of one ``execute_in_process`` run of a job of 7 chained no-op ops.

Runs inside the dagster venv, ``DAGSTER_HOME`` unset. Two variants: the default ephemeral
(in-memory) instance, and a persistent SQLite instance in a temporary folder (run, event log
and compute-log storage on disk, telemetry off). Console logging is set to CRITICAL.
Measured per run: ``job.execute_in_process`` until it returns.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import tempfile
import time
import warnings
from typing import Any

from _common import STEPS, emit, parse_args, time_runs

RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def main() -> None:
    args = parse_args(__doc__)
    os.environ.pop("DAGSTER_HOME", None)
    warnings.filterwarnings("ignore")
    from dagster import DagsterInstance, job, op

    logging.getLogger("dagster").setLevel(logging.CRITICAL)

    @op
    def first() -> int:
        return 0

    @op
    def step(x: int) -> int:
        return x

    @job
    def chain7() -> None:
        x = first()
        for i in range(1, STEPS):
            x = step.alias(f"step{i}")(x)

    version = importlib.metadata.version("dagster")
    with tempfile.TemporaryDirectory(prefix="dagster-home-") as home:
        instances = {
            "in_process_ephemeral": DagsterInstance.ephemeral(),
            "in_process_sqlite": DagsterInstance.local_temp(
                tempdir=home, overrides={"telemetry": {"enabled": False}}
            ),
        }
        for variant, instance in instances.items():
            with instance:

                def one(instance: DagsterInstance = instance) -> object:
                    res = chain7.execute_in_process(run_config=RUN_CONFIG, instance=instance)
                    if not res.success:
                        raise RuntimeError("dagster run failed")
                    return res

                t0 = time.perf_counter()
                one()
                first_ms = (time.perf_counter() - t0) * 1000.0
                times = time_runs(one, args.runs, max(args.warmup - 1, 0))
                emit("dagster", variant, version, times, first_run_ms=round(first_ms, 1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
