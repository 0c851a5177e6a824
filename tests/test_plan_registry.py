"""The plan registry against a real nats-server: an orchestrator keeps the plans it read
while they stay current, and hears of a plan registered elsewhere; other readers read the
bucket every time."""

from __future__ import annotations

import asyncio

import msgspec

from sisas.bus.registry import PlanRegistry
from sisas.bus.runtime import Bus, open_bus
from sisas.bus.settings import Settings
from sisas.pipeline import Context, Pipeline


def _pipeline(version: str) -> Pipeline:
    pipe = Pipeline("registered", version=version)

    @pipe.phase()
    def only(ctx: Context, input: int) -> int:
        return input

    return pipe


async def _version_seen(registry: PlanRegistry, version: str, within: float = 30.0) -> None:
    """Wait until ``registry`` answers a plan of ``version`` (at most ``within`` s)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        plan = await registry.get("registered")
        if plan is not None and plan.version == version:
            return
        assert loop.time() - start < within, f"version {version} not seen in {within}s"
        await asyncio.sleep(0.01)


async def test_an_orchestrators_registry_hears_of_a_plan_registered_elsewhere(
    bus: Bus, settings: Settings
) -> None:
    kept = PlanRegistry(bus.js, bus.nc, keep=3600.0)  # only a put can drop what it keeps
    kept.listen()
    async with open_bus(settings) as other:
        await other.plans.publish(_pipeline("1").plan())
        assert (await kept.get("registered")).version == "1"  # type: ignore[union-attr]
        await other.plans.publish(_pipeline("2").plan())
        await _version_seen(kept, "2")  # heard on the bucket's subjects, not by a timeout
        await other.plans.publish(_pipeline("3").plan())
        await _version_seen(kept, "3")


async def test_a_kept_plan_is_read_again_after_a_while_without_the_notice(bus: Bus) -> None:
    kept = PlanRegistry(bus.js, bus.nc, keep=1.0)
    kept.listen()
    await kept.publish(_pipeline("1").plan())
    assert (await kept.get("registered")).version == "1"  # type: ignore[union-attr]
    # A put its notice never reaches (as for a user who may not listen there): written
    # straight into the bucket, with the registry's own notices switched off.
    kv = await bus.js.key_value("sisas-pipelines")
    await kept._listening.unsubscribe()  # type: ignore[union-attr]
    await kv.put("registered", msgspec.json.encode(_pipeline("2").plan()))
    assert (await kept.get("registered")).version == "1"  # type: ignore[union-attr]  # kept
    await _version_seen(kept, "2")  # read again once kept a second


async def test_readers_that_do_not_listen_read_the_bucket_every_time(
    bus: Bus, settings: Settings
) -> None:
    reader = PlanRegistry(bus.js, bus.nc)
    async with open_bus(settings) as other:
        await other.plans.publish(_pipeline("1").plan())
        assert (await reader.get("registered")).version == "1"  # type: ignore[union-attr]
        await other.plans.publish(_pipeline("2").plan())
        assert (await reader.get("registered")).version == "2"  # type: ignore[union-attr]


async def test_a_plan_not_registered_yet_is_read_again_at_once(
    bus: Bus, settings: Settings
) -> None:
    kept = PlanRegistry(bus.js, bus.nc, keep=3600.0)
    kept.listen()
    assert await kept.get("registered") is None
    async with open_bus(settings) as other:
        await other.plans.publish(_pipeline("1").plan())
        # the next read finds it, whether or not the put's notice has arrived
        assert (await kept.get("registered")).version == "1"  # type: ignore[union-attr]
