"""Dagster: wall time of one ``execute_in_process`` run of a job of 7 chained no-op ops.

Runs inside the dagster venv, ``DAGSTER_HOME`` unset. Two variants: the default ephemeral
(in-memory) instance, and a persistent SQLite instance in a temporary folder (run, event log
and compute-log storage on disk, telemetry off). Console logging is set to CRITICAL.
Measured per run: ``job.execute_in_process`` until it returns.

With ``--fanout N``: a job whose first op yields N ``DynamicOutput``s (``DynamicOut``), a
no-op op ``.map``-ped over them and a join op over ``.collect()``, on both instances, run
the same way (``execute_in_process``: the in-process executor, every step in this process
one after the other). Per item Dagster plans a step, runs it, pickles its output to the IO
manager (the filesystem under the instance's folder, in memory for ``execute_in_process``)
and records ~8 events (step start, input, output, handled output, success...) in the
instance's event log (in memory, or rows in SQLite). A job launched by ``dagster dev`` or a
daemon uses the multiprocess executor by default: one Python process per step, which
costs ~1 s of start-up each; not measured here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from typing import Any

from _common import (
    FANOUT_WARMUP_ITEMS,
    STEPS,
    emit,
    emit_fanout,
    parse_args,
    progress,
    time_runs,
)

RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def main() -> None:
    args = parse_args(__doc__)
    os.environ.pop("DAGSTER_HOME", None)
    warnings.filterwarnings("ignore")
    from dagster import (
        DagsterInstance,
        DynamicOut,
        DynamicOutput,
        In,
        job,
        op,
    )

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

    def chain(
        instance: DagsterInstance, variant: str, version: str, runs: int, warmup: int
    ) -> None:
        def one() -> object:
            res = chain7.execute_in_process(run_config=RUN_CONFIG, instance=instance)
            if not res.success:
                raise RuntimeError("dagster run failed")
            return res

        t0 = time.perf_counter()
        one()
        first_ms = (time.perf_counter() - t0) * 1000.0
        times = time_runs(one, runs, max(warmup - 1, 0))
        emit("dagster", variant, version, times, first_run_ms=round(first_ms, 1))

    @op(config_schema={"n": int}, out=DynamicOut(int))
    def spread(context) -> Iterator[Any]:  # type: ignore[no-untyped-def]  # dagster checks the hint
        for i in range(context.op_config["n"]):
            yield DynamicOutput(i, mapping_key=str(i))

    @op
    def each(x: int) -> int:
        return x

    @op(ins={"xs": In(list)})
    def total(xs: list[int]) -> int:
        return len(xs)

    @job
    def fan() -> None:
        total(spread().map(each).collect())

    def fan_config(n: int) -> dict[str, Any]:
        return {**RUN_CONFIG, "ops": {"spread": {"config": {"n": n}}}}

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
                if args.runs:
                    chain(instance, variant, version, args.runs, args.warmup)
                for n in args.fanout:
                    fan_variant = f"fanout_{variant}"
                    progress("dagster", fan_variant, n)

                    def one_fan(n: int = n, instance: DagsterInstance = instance) -> object:
                        res = fan.execute_in_process(run_config=fan_config(n), instance=instance)
                        if not res.success or res.output_for_node("total") != n:
                            raise RuntimeError("dagster fan-out failed")
                        return res

                    one_fan(FANOUT_WARMUP_ITEMS)
                    times = time_runs(one_fan, args.fanout_runs, 0)
                    emit_fanout("dagster", fan_variant, version, n, times)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
