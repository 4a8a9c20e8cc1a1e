"""Waiting runs live in the store, not in an engine; engines sharing PostgreSQL hand runs to each other
through claims, inboxes and notices; a run whose engine stops renewing its lease is taken over."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest

from legato import Engine, Service
from legato.engine import inbox
from legato.engine.state import Cancel
from legato.errors import Conflict, LegatoError
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


GATE: asyncio.Event | None = None


async def gate() -> dict[str, bool]:
    """A Python step that runs until the test opens the gate."""
    assert GATE is not None
    await GATE.wait()
    return {"through": True}


CHILD = {
    "name": "child",
    "steps": {"g": {"python": {"function": "tests.integration.test_store_resident:gate"}}},
    "output": "{{ steps.g.output }}",
}
PARENT = {
    "name": "parent",
    "steps": {"c": {"workflow": {"name": "child", "input": {}}}},
    "output": "{{ steps.c.output }}",
}


async def test_two_events_reach_two_listeners_in_turn(engine: Engine) -> None:
    await engine.apply(
        {
            "name": "twice",
            "steps": {
                "a": {"listen": {"event": "pay", "key": "k"}},
                "b": {"depends_on": "a", "listen": {"event": "pay", "key": "k"}},
            },
            "output": ["{{ steps.a.output }}", "{{ steps.b.output }}"],
        }
    )
    run_id = await engine.start_run("twice")
    await until(lambda: engine.active_runs() == 0)
    first = await engine.publish("pay", "k", 1)
    second = await engine.publish("pay", "k", 2)  # `a` took the first: this one is kept for `b`
    assert first.delivered_to == [run_id] and second.delivered_to == []
    assert second.kept_until is not None
    assert (await engine.wait(run_id, timeout=5)).info.output == [1, 2]


async def test_a_run_parked_after_an_event_it_held_is_not_claimed_again(engine: Engine) -> None:
    await engine.apply(
        {
            "name": "held",
            "steps": {
                "a": {"listen": {"event": "e1", "key": "k"}},
                "nap": {"wait": "0.5s"},
                "b": {"depends_on": ["a", "nap"], "listen": {"event": "e2", "key": "k"}},
            },
        }
    )
    await engine.start_run("held")
    await engine.publish("e1", "k", 1)  # while the run is held (its timer is due soon)
    await until(lambda: engine.active_runs() == 0)
    await asyncio.sleep(1.0)
    assert engine.stats["claimed"] == 0 and engine.active_runs() == 0


async def test_a_second_engine_on_one_sqlite_file_is_refused(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    async with Engine.open(url):
        with pytest.raises(LegatoError, match="another Legato engine is using"):
            await Engine.open(url).start()


async def test_a_fenced_engine_writes_nothing_for_the_run_it_lost(shared_db: str) -> None:
    global GATE
    GATE = asyncio.Event()
    conn = await asyncpg.connect(
        shared_db.split("?")[0], server_settings={"search_path": shared_db.split("=")[-1]}
    )
    try:
        async with Engine.open(shared_db) as a, Engine.open(shared_db, worker=False) as api:
            await a.apply(CHILD)
            await a.apply(PARENT)
            parent = await a.start_run("parent")
            await until(lambda: any(r != parent for r in a._runs))  # the child, at its gate
            child = next(r for r in a._runs if r != parent)
            while await conn.fetchval("SELECT owner FROM runs WHERE id = $1", child) is None:
                await asyncio.sleep(0.01)  # committed, held by `a`
            # Another engine took the child over (this one stalled past its lease).
            await conn.execute(
                "UPDATE runs SET owner = 'thief', lease_until = $1 WHERE id = $2",
                time.time() + 1000,
                child,
            )
            # An event for the thief: it waits in the child's inbox. (A cancel no longer goes
            # through the inbox: it is set-wise in the store, whoever holds the run.)
            await api.store.deliver(child, inbox.encode(Cancel()), time.time())
            GATE.set()  # the step ends here, in the engine that lost the child
            await until(lambda: child not in a._runs)
            await asyncio.sleep(0.3)
            assert await conn.fetchval("SELECT status FROM runs WHERE id = $1", child) == "running"
            assert (await a.get_run(parent)).info.status == "running"  # no end was delivered
            assert await conn.fetchval("SELECT count(*) FROM inbox WHERE run_id = $1", child) == 1
    finally:
        await conn.close()


async def test_a_graceful_stop_hands_over_the_work_it_skipped(shared_db: str) -> None:
    """A parent whose child would start during the drain: the next engine starts it."""
    global GATE
    GATE = asyncio.Event()
    first = Engine.open(shared_db)
    await first.start()
    await first.apply(CHILD)
    await first.apply(
        {
            "name": "later",
            "steps": {
                "g": {"python": {"function": "tests.integration.test_store_resident:gate"}},
                "c": {"depends_on": "g", "workflow": {"name": "child", "input": {}}},
            },
            "output": "{{ steps.c.output }}",
        }
    )
    run_id = await first.start_run("later")
    await until(lambda: bool(first._runs[run_id].tasks))
    closing = asyncio.create_task(first.close(grace=5))
    await asyncio.sleep(0.2)
    GATE.set()  # `g` ends during the drain: the child step is decided, its start skipped
    await closing
    async with Engine.open(shared_db) as second:
        state = await second.wait(run_id, timeout=10)
        assert state.info.status == "succeeded" and state.info.output == {"through": True}


async def test_timers_fire_once_whichever_of_two_workers_claims_them(
    shared_db: str, service: LoopbackService
) -> None:
    timed = {
        "name": "timed",
        "inputs": {"n": "integer"},
        "steps": {
            "nap": {"wait": "1500ms"},
            "call": {
                "depends_on": "nap",
                "http": {"service": "svc", "path": "/echo", "json": {"n": "{{ input.n }}"}},
            },
        },
    }
    async with Engine.open(shared_db) as one, Engine.open(shared_db) as two:
        await one.put_service(Service(name="svc", base_url=service.url, timeout=5))
        await one.apply(timed)
        ids = [await (one if n % 2 else two).start_run("timed", {"n": n}) for n in range(40)]
        await until(lambda: one.active_runs() + two.active_runs() == 0)  # all parked
        for run_id in ids:
            assert (await one.wait(run_id, timeout=15)).info.status == "succeeded"
        keys = Counter(r.headers["Idempotency-Key"] for r in service.requests)
        assert sorted(keys) == sorted(f"{i}:call" for i in ids) and set(keys.values()) == {1}
        assert one.stats["claimed"] + two.stats["claimed"] == 40  # each timer woke one engine


async def boom() -> None:
    raise RuntimeError("always")


async def test_a_retry_right_after_the_failure_runs_again(engine: Engine) -> None:
    await engine.apply(
        {
            "name": "boom",
            "steps": {"s": {"python": {"function": "tests.integration.test_store_resident:boom"}}},
        }
    )
    run_id = await engine.start_run("boom")
    while (live := engine.live_run(run_id)) is None or live.info.status != "failed":
        await asyncio.sleep(0)  # failed here, the failure perhaps not committed yet
    await engine.retry(run_id)
    await until(lambda: engine.active_runs() == 0)
    state = await engine.wait(run_id, timeout=5)
    assert state.info.status == "failed" and state.steps["s"].attempt == 2


async def test_each_run_woken_by_an_event_is_claimed_once(engine: Engine) -> None:
    await engine.apply(
        {
            "name": "one-event",
            "inputs": {"k": "string"},
            "steps": {"a": {"listen": {"event": "go", "key": "{{ input.k }}"}}},
        }
    )
    ids = [await engine.start_run("one-event", {"k": str(i)}) for i in range(20)]
    await until(lambda: engine.active_runs() == 0)
    for i in range(20):
        await engine.publish("go", str(i), i)
    for run_id in ids:
        assert (await engine.wait(run_id, timeout=5)).info.status == "succeeded"
    await asyncio.sleep(0.5)
    assert engine.stats["claimed"] == 20  # ended runs are not claimed back for spent inbox rows
