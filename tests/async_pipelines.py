"""Pipelines with async phases (loaded by file path by the tests, also in child processes)."""

from __future__ import annotations

import asyncio

from sisas.pipeline import Context, Pipeline

waiting = Pipeline("waiting", version="1")


@waiting.phase()
async def fetch(ctx: Context, input: dict[str, float]) -> float:
    await asyncio.sleep(float(input.get("seconds", 0.01)))
    return float(input.get("value", 1.0))


@waiting.phase(timeout=5)
async def double(ctx: Context, fetch: float) -> float:  # a child process: timeout= isolates it
    await asyncio.sleep(0.01)
    return fetch * 2


@waiting.phase(timeout=0.5, retries=1, backoff=0.01)
async def stall(ctx: Context, double: float) -> float:
    if ctx.config.get("stall"):
        await asyncio.sleep(30)  # past its timeout: cancelled like any phase
    return double + 1
