"""Waiting runs live in the store, not in an engine; engines sharing PostgreSQL hand runs to each other
through claims, inboxes and notices; a run whose engine stops renewing its lease is taken over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from legato import Engine, Service
from legato.errors import Conflict
from tests.integration.brokers import postgres_url
from tests.integration.testservice import LoopbackService

WAITS = {
    "name": "waits",
    "inputs": {"order_id": "string"},
    "steps": {
        "nap": {"wait": "2s"},
        "paid": {"listen": {"event": "payment", "key": "{{ input.order_id }}"}},
        "done": {
            "depends_on": ["nap", "paid"],
            "http": {
                "service": "svc",
                "path": "/echo",
                "json": {"paid": "{{ steps.paid.output }}"},
            },
        },
    },
    "output": "{{ steps.done.output.body.echo.paid }}",
}


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_waiting_run_is_held_by_no_engine(engine: Engine) -> None:
    await engine.apply(WAITS)
    ids = [await engine.start_run("waits", {"order_id": f"o{i}"}) for i in range(20)]
    # Each run waits for a timer (2 s away) and an event: nothing in this process holds them.
    await until(lambda: engine.active_runs() == 0)
    assert engine.stats["parked"] >= 20
    for i in range(20):
        result = await engine.publish("payment", f"o{i}", {"amount": i})
        assert result.delivered_to == [ids[i]]
    for i, run_id in enumerate(ids):
        state = await engine.wait(run_id, timeout=10)
        assert state.info.status == "succeeded", state.info.error
        assert state.info.output == {"amount": i}
        assert state.steps["nap"].finished_at - state.steps["nap"].started_at >= 2.0  # type: ignore[operator]


async def test_a_parked_run_is_cancelled_and_retried_through_its_inbox(engine: Engine) -> None:
    await engine.apply(WAITS)
    run_id = await engine.start_run("waits", {"order_id": "c1"})
    await until(lambda: engine.active_runs() == 0)
    await engine.cancel(run_id)
    state = await engine.get_run(run_id)
    assert state.info.status == "cancelled"
    with pytest.raises(Conflict):
        await engine.cancel(run_id)
    await engine.retry(run_id)
    assert (await engine.get_run(run_id)).info.status == "running"
    await engine.publish("payment", "c1", "late")
    assert (await engine.wait(run_id, timeout=10)).info.output == "late"


@pytest.fixture
async def shared_db() -> AsyncIterator[str]:
    base = postgres_url()
    schema = f"legato_test_{uuid.uuid4().hex[:12]}"
    yield f"{base}?schema={schema}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_an_api_only_engine_leaves_the_steps_to_a_worker(
    shared_db: str, service: LoopbackService
) -> None:
    async with (
        Engine.open(shared_db, worker=False) as api,
        Engine.open(shared_db) as worker,
    ):
        await api.put_service(Service(name="svc", base_url=service.url, timeout=5))
        await api.apply(WAITS)
        run_id = await api.start_run("waits", {"order_id": "x1"})
        assert api.active_runs() == 0
        await until(lambda: worker.stats["claimed"] >= 1)  # a notice woke the worker at once
        await api.publish("payment", "x1", {"ok": True})  # delivered to the run's inbox
        started = time.monotonic()
        assert await api.wait_ended(run_id, timeout=10)  # heard from the worker's notice
        assert time.monotonic() - started < 4.0
        state = await api.get_run(run_id)
        assert state.info.status == "succeeded", state.info.error
        assert state.info.output == {"ok": True}
        assert [s.path for s in service.requests] == ["/echo"]


async def test_a_run_whose_engine_stops_renewing_is_taken_over_and_the_old_engine_is_fenced(
    shared_db: str, service: LoopbackService
) -> None:
    slow = {
        "name": "slow",
        "steps": {"nap": {"http": {"service": "svc", "path": "/slow", "query": {"delay": "2"}}}},
    }
    first = Engine.open(shared_db, lease=1.0)
    await first.start()
    try:
        await first.put_service(Service(name="svc", base_url=service.url, timeout=10))
        await first.apply(slow)
        run_id = await first.start_run("slow")
        await until(lambda: len(service.requests) == 1)
        # The first engine stalls (as a paused VM would): it neither renews nor releases.
        assert first._renewer is not None and first._claimer is not None
        first._renewer.cancel()
        first._claimer.cancel()
        async with Engine.open(shared_db, lease=1.0) as second:
            state = await second.wait(run_id, timeout=10)
            assert state.info.status == "succeeded"
            assert second.stats["claimed"] == 1
            keys = [r.headers["Idempotency-Key"] for r in service.requests]
            assert keys == [f"{run_id}:nap", f"{run_id}:nap"]  # the step in flight, once more
            # The first engine's call ends after the takeover: its outcome is not written.
            await until(lambda: run_id not in first._runs, timeout=5)
            again = await second.get_run(run_id)
            assert again.steps["nap"].finished_at == state.steps["nap"].finished_at
    finally:
        await first.close()
