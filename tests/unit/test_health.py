"""Readiness comes back with the store: a commit retried on a backoff of up to 5 s left /readyz 503
for ~8 s after PostgreSQL was back; the retry now wakes when the probe finds the store again."""

from __future__ import annotations

import asyncio

from legato.engine.health import Health


async def test_a_pause_ends_when_a_failing_store_answers_again() -> None:
    up = False

    async def probe() -> None:
        if not up:
            raise ConnectionRefusedError("the store is down")

    health = Health(probe, every=0.05)
    health.start()
    try:
        await asyncio.sleep(0.2)
        assert health.failing("store")

        async def back() -> None:
            nonlocal up
            await asyncio.sleep(0.3)
            up = True

        coming = asyncio.create_task(back())
        loop = asyncio.get_running_loop()
        began = loop.time()
        await health.pause(5.0)
        assert loop.time() - began < 1.0
        assert health.failing("store") is None
        await coming
    finally:
        await health.stop()


async def test_a_pause_lasts_its_delay_while_nothing_changes() -> None:
    async def probe() -> None:
        return None

    health = Health(probe, every=0.05)
    health.start()
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await health.pause(0.3)  # the store never failed: nothing to wake for
        assert 0.25 < loop.time() - began < 1.0
    finally:
        await health.stop()
