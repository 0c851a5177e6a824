"""Task execution and validation: a queue of tasks, each run as a real process by its adapter.

    intake          the queue checked and routed: every task names a known adapter
    <adapter>_queue the tasks routed to one adapter (`python`, `shell`)
    <adapter>_run   fanned out, one item per task, `partial`: a task that fails for good
                    does not sink the queue. Per task:
                      IN_PROGRESS  the adapter spawns the process; its output is
                                   streamed line by line (live progress, log), with
                                   the task's own timeout (TIMEOUT: retried)
                      VALIDATING   acceptance: the exit code and the file it must
                                   produce (FAILED: retried, with the output's tail)
                      COMPLETED    exit code, the file's size and sha256, the output's
                                   tail; invariants ACCEPT-EXIT and ACCEPT-FILE record
                                   the acceptance evidence in the log
    report          every task's final state; TASKS-ACCEPTED holds when all completed

Each adapter is its own phase, so each has its own circuit breaker: three failed
attempts in a row open it (`circuit_opened`), attempts of that adapter are held back for
the cool-down, and the next attempt after it is the half-open probe whose success
closes it (`circuit_closed`). The other adapter keeps running meanwhile.
Attempt durations are in `phase_completed`/`phase_failed` (`duration`), not in outputs,
so a rerun of the same commands gives the same digests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from sisas.pipeline import Context, HardFailure, Pipeline, Timeout

ADAPTERS: dict[str, list[str]] = {
    "python": [sys.executable, "-c"],
    "shell": ["/bin/sh", "-c"],
}
"""Adapter -> the argv prefix its command is appended to."""

TAIL = 5


class TaskSpec(BaseModel):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    adapter: str
    command: str = Field(min_length=1)
    produces: str = Field(pattern=r"^[\w.-]+$")
    """The file (in the task's working folder) it must produce."""
    expect_exit: int = 0
    timeout: float = Field(default=30.0, gt=0)


class TaskQueue(BaseModel):
    """The run input: the tasks, in queue order (ids unique)."""

    tasks: list[TaskSpec] = Field(min_length=1)


class Produced(BaseModel):
    name: str
    bytes: int = Field(ge=1)
    sha256: str
    text: str
    """The file itself when it is small text (up to 2 KiB), else empty."""


class TaskResult(BaseModel):
    id: str
    adapter: str
    state: Literal["COMPLETED"]
    transitions: list[str]
    exit_code: int
    expect_exit: int
    produced: Produced
    output_lines: int
    output_tail: list[str]


class TaskLine(BaseModel):
    id: str
    adapter: str
    state: Literal["COMPLETED", "FAILED"]
    produced: str = ""


class Report(BaseModel):
    tasks: list[TaskLine]
    completed: int
    failed: int
    by_adapter: dict[str, dict[str, int]]


pipeline = Pipeline(
    "task_execution",
    version="1.0",
    input=TaskQueue,
    description="Tasks run as processes by adapters, accepted on exit code and output file",
    circuit_threshold=3,
    circuit_cooldown=2.0,
    default_input=Path(__file__).parent / "data" / "queue.json",
)


@pipeline.phase()
def intake(ctx: Context, input: TaskQueue) -> list[TaskSpec]:
    """Refuse a queue with a duplicate id or an unknown adapter, naming them."""
    ids = [t.id for t in input.tasks]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    unknown = sorted({f"{t.id} ({t.adapter})" for t in input.tasks if t.adapter not in ADAPTERS})
    if twice or unknown:
        raise HardFailure(
            "; ".join(
                ([f"task ids used twice: {', '.join(twice)}"] if twice else [])
                + (
                    [f"unknown adapters: {', '.join(unknown)}; use one of {', '.join(ADAPTERS)}"]
                    if unknown
                    else []
                )
            )
        )
    return list(input.tasks)


def _stream(proc: subprocess.Popen[str], ctx: Context, task: str, lines: deque[str]) -> int:
    """Read the process's output as it comes: each line logged and shown as progress."""
    count = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        count += 1
        lines.append(line.rstrip("\n"))
        ctx.log.info("%s | %s", task, line.rstrip("\n"))
        ctx.progress(count, count + 10, f"{task}: {line.strip()[:60]}")
    return count


def execute_task(ctx: Context, task: TaskSpec) -> TaskResult:
    """Run ``task`` with its adapter, then accept it on its exit code and produced file."""
    workdir = Path(tempfile.mkdtemp(prefix=f"sisas-task-{task.id}-"))
    try:
        argv = [*ADAPTERS[task.adapter], task.command]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        ctx.progress(0, 1, f"{task.id}: IN_PROGRESS ({task.adapter})")
        tail: deque[str] = deque(maxlen=TAIL)
        counted: list[int] = []
        with subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            reader = threading.Thread(
                target=lambda: counted.append(_stream(proc, ctx, task.id, tail))
            )
            reader.start()
            try:
                exit_code = proc.wait(timeout=task.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                reader.join()
                raise Timeout(
                    f"task {task.id}: TIMEOUT after {task.timeout}s ({task.adapter} adapter)",
                    detail="\n".join(tail),
                ) from None
            reader.join()
        ctx.progress(0.9, 1, f"{task.id}: VALIDATING")
        path = workdir / task.produces
        problems = []
        if exit_code != task.expect_exit:
            problems.append(f"exit code {exit_code} (expected {task.expect_exit})")
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{task.produces} not produced")
        if problems:
            raise HardFailure(
                f"task {task.id}: FAILED validation: {'; '.join(problems)}",
                retryable=True,
                detail="\n".join(tail),
            )
        data = path.read_bytes()
        text = data.decode("utf-8", "replace") if len(data) <= 2048 else ""
        return TaskResult(
            id=task.id,
            adapter=task.adapter,
            state="COMPLETED",
            transitions=["IN_PROGRESS", "VALIDATING", "COMPLETED"],
            exit_code=exit_code,
            expect_exit=task.expect_exit,
            produced=Produced(
                name=task.produces,
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                text=text,
            ),
            output_lines=counted[0] if counted else 0,
            output_tail=list(tail),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _adapter_phases(adapter: str) -> None:
    @pipeline.phase(name=f"{adapter}_queue", depends_on=["intake"])
    def select(ctx: Context, intake: list[TaskSpec]) -> list[TaskSpec]:
        return [t for t in intake if t.adapter == adapter]

    @pipeline.phase(
        name=f"{adapter}_run", map_over=f"{adapter}_queue", retries=1, backoff=0.2, partial=True
    )
    def run(ctx: Context, item: TaskSpec) -> TaskResult:
        return execute_task(ctx, item)


for _adapter in ADAPTERS:
    _adapter_phases(_adapter)


@pipeline.invariant("ACCEPT-EXIT", phase="python_run", description="exit code as expected")
@pipeline.invariant("ACCEPT-EXIT", phase="shell_run", description="exit code as expected")
def accepted_exit(r: TaskResult) -> tuple[bool, int, str]:
    return r.exit_code == r.expect_exit, r.exit_code, r.expect_exit


@pipeline.invariant("ACCEPT-FILE", phase="python_run", description="the file was produced")
@pipeline.invariant("ACCEPT-FILE", phase="shell_run", description="the file was produced")
def accepted_file(r: TaskResult) -> tuple[bool, str, str]:
    return r.produced.bytes > 0, f"{r.produced.name} sha256:{r.produced.sha256[:12]}", "a file"


@pipeline.phase()
def report(
    ctx: Context,
    python_queue: list[TaskSpec],
    python_run: list[TaskResult | None],
    shell_queue: list[TaskSpec],
    shell_run: list[TaskResult | None],
) -> Report:
    """Every task's final state, in queue order per adapter (None: it failed for good)."""
    lines = [
        TaskLine(
            id=spec.id,
            adapter=spec.adapter,
            state="COMPLETED" if result else "FAILED",
            produced=result.produced.sha256 if result else "",
        )
        for queue, results in ((python_queue, python_run), (shell_queue, shell_run))
        for spec, result in zip(queue, results, strict=True)
    ]
    by_adapter = {
        a: {
            s: sum(1 for t in lines if t.adapter == a and t.state == s)
            for s in ("COMPLETED", "FAILED")
        }
        for a in ADAPTERS
    }
    done = sum(t.state == "COMPLETED" for t in lines)
    return Report(tasks=lines, completed=done, failed=len(lines) - done, by_adapter=by_adapter)


@pipeline.invariant("TASKS-ACCEPTED", phase="report", description="every task completed")
def all_accepted(r: Report) -> tuple[bool, str, str]:
    failed = [t.id for t in r.tasks if t.state != "COMPLETED"]
    return not failed, ", ".join(failed) or "none", "none failed"
