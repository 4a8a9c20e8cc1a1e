"""Scheduled workflows on both backends, in real time with 1 s intervals: one run per interval
across engines, restarts and downtime; catchup or only the latest; pause and unpause."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from legato import Engine
from legato.engine.state import RunInfo


def ticking(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "1s",
        "start_date": time.time() - 0.5,
        **extra,
        "steps": {"nap": {"wait": "10ms"}},
        "output": "{{ input.schedule.interval_start_ts }}",
    }


async def finished(
    engine: Engine, workflow: str, at_least: int, timeout: float = 15.0
) -> list[RunInfo]:
    """The workflow's runs once at least `at_least` of them exist and all have ended."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await engine.store.list_runs(workflow=workflow, limit=1000)
        if len(runs) >= at_least and all(r.done for r in runs):
            return runs
        assert time.monotonic() < deadline, f"{len(runs)} runs, want {at_least}: {runs}"
        await asyncio.sleep(0.05)


def starts(runs: list[RunInfo]) -> list[float]:
    return sorted(r.input["schedule"]["interval_start_ts"] for r in runs)


async def test_each_interval_runs_once_with_its_interval_in_context(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply(ticking("tick"))
        runs = await finished(engine, "tick", 3)
        assert all(r.status == "succeeded" for r in runs)
        for r in runs:
            sched = r.input["schedule"]
            assert r.output == sched["interval_start_ts"]
            assert sched["interval_end_ts"] - sched["interval_start_ts"] == 1.0
            assert sched["interval_start"].endswith("Z")
            assert r.created_at >= sched["interval_end_ts"]  # due once its interval is over
        got = starts(runs)
        assert got == [got[0] + i for i in range(len(got))]  # no interval twice, none skipped
        assert engine.stats["scheduled"] == len(runs)


async def test_a_restart_after_downtime_catches_up_each_missed_interval_once(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply(ticking("catchup"))
        await finished(engine, "catchup", 1)
    await asyncio.sleep(3.2)  # down for three intervals
    async with Engine.open(db_url) as engine:
        runs = await finished(engine, "catchup", 5)
    got = starts(runs)
    assert got == [got[0] + i for i in range(len(got))]


async def test_without_catchup_a_restart_runs_only_the_latest_interval(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply(ticking("latest", catchup=False))
        before = len(await finished(engine, "latest", 1))
    await asyncio.sleep(3.2)
    async with Engine.open(db_url) as engine:
        after = starts(await finished(engine, "latest", before + 1))
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert max(gaps) >= 3  # the intervals missed while down were skipped
    assert all(g >= 1 for g in gaps)  # and none ran twice


async def test_pause_stops_runs_and_unpause_catches_up(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply(ticking("pausing"))
        await finished(engine, "pausing", 1)
        await engine.pause_schedule("pausing", True)
        [listed] = await engine.list_schedules()
        assert listed["paused"] is True and listed["next_fire"] is None
        await asyncio.sleep(0.3)  # a pass under way when it was paused ends
        count = len(await engine.store.list_runs(workflow="pausing"))
        await asyncio.sleep(2.5)
        assert len(await engine.store.list_runs(workflow="pausing")) == count
        await engine.pause_schedule("pausing", False)
        runs = await finished(engine, "pausing", count + 2)
        got = starts(runs)
        assert got == [got[0] + i for i in range(len(got))]  # catchup: none was lost


async def test_an_unknown_schedule_cannot_be_paused(db_url: str) -> None:
    from legato.errors import NotFound

    async with Engine.open(db_url) as engine:
        with pytest.raises(NotFound):
            await engine.pause_schedule("nothing", True)


async def test_max_active_runs_holds_the_next_interval_back(db_url: str) -> None:
    definition = ticking("crowded", max_active_runs=1)
    definition["steps"] = {"nap": {"wait": "2500ms"}}
    async with Engine.open(db_url) as engine:
        await engine.apply(definition)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            runs = await engine.store.list_runs(workflow="crowded")
            assert sum(not r.done for r in runs) <= 1
            await asyncio.sleep(0.05)
        assert len(runs) >= 2


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_engines_on_one_database_make_one_run_per_interval(db_url: str) -> None:
    async with Engine.open(db_url) as one, Engine.open(db_url) as two:
        await one.apply(ticking("shared"))
        await asyncio.sleep(4.5)
        runs = await finished(one, "shared", 4)
        got = starts(runs)
        assert got == [got[0] + i for i in range(len(got))]
        assert all(r.status == "succeeded" for r in runs)
        # Stopped, so that no fire happens between counting the fires and the runs.
        await one.pause_schedule("shared", True)
        await asyncio.sleep(1.5)
        made = await one.store.list_runs(workflow="shared")
        assert one.stats["scheduled"] + two.stats["scheduled"] == len(made)


async def test_runs_are_listed_by_tag_on_every_backend(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        for name, labels in (("red", ["warm"]), ("blue", ["cold"]), ("orange", ["warm"])):
            await engine.apply({"name": name, "tags": labels, "steps": {"a": {"wait": "1ms"}}})
            await engine.run(name, timeout=10)
        tags = await engine.tags()
        assert tags == {"cold": ["blue"], "warm": ["orange", "red"]}
        warm = await engine.store.list_runs(workflows=tags["warm"])
        assert sorted(r.workflow for r in warm) == ["orange", "red"]
        assert await engine.store.list_runs(workflows=[]) == []
        assert [
            r.workflow for r in await engine.store.list_runs(status="succeeded", workflows=["blue"])
        ] == ["blue"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_worker_follows_a_version_registered_by_another_process(db_url: str) -> None:
    async with Engine.open(db_url, worker=False) as api, Engine.open(db_url) as worker:
        first = ticking("versioned")
        await api.apply(first)
        await finished(worker, "versioned", 1)
        await api.apply({**first, "output": "v2"})  # the same calendar, another output
        deadline = time.monotonic() + 10
        while sum(r.version == 2 for r in await worker.store.list_runs(workflow="versioned")) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        runs = await finished(worker, "versioned", 3)
        assert {r.output for r in runs if r.version == 2} == {"v2"}
        got = starts(runs)
        # A new version neither reruns nor skips an interval.
        assert got == [got[0] + i for i in range(len(got))], [(r.version, r.input) for r in runs]


async def test_racing_fires_of_one_interval_make_one_run(db_url: str) -> None:
    """Store level: many concurrent attempts at the same interval (two stores on PostgreSQL, as two
    processes would), then the schedule row made again: one run, whatever happens."""
    import random

    from legato.engine.decider import decide
    from legato.engine.ids import scheduled_run_id
    from legato.engine.scheduler import scheduled_input
    from legato.engine.state import RunState, Start
    from legato.model.build import build_workflow
    from legato.store.protocol import open_store

    wf = build_workflow({**ticking("raced"), "start_date": 100.0})
    info = RunInfo(
        scheduled_run_id("raced", 100.0),
        "raced",
        1,
        "pending",
        scheduled_input(wf, 100.0, 101.0),
        200.0,
    )
    decision = decide(wf, RunState(info), Start(), 200.0, random.random())
    decision.new_run = True
    stores = [open_store(db_url)] + ([open_store(db_url)] if db_url.startswith("postgres") else [])
    for store in stores:
        await store.open()
    try:
        await stores[0].add_schedule("raced", 100.0, 200.0)
        attempts = [
            stores[i % len(stores)].fire_schedule("raced", 100.0, 101.0, decision, None, 200.0)
            for i in range(12)
        ]
        outcomes = await asyncio.gather(*attempts)
        assert outcomes.count("fired") == 1 and set(outcomes) == {"fired", "moved"}
        [row] = await stores[0].list_schedules()
        assert row.next_start == 101.0
        await stores[0].drop_schedule("raced")  # made again from scratch: the interval is due again
        await stores[0].add_schedule("raced", 100.0, 200.0)
        assert (
            await stores[0].fire_schedule("raced", 100.0, 101.0, decision, None, 200.0) == "fired"
        )
        runs = await stores[0].list_runs(workflow="raced")
        assert [r.id for r in runs] == [info.id]  # still one run: its id is the interval's
        assert await stores[0].fire_schedule("raced", 101.0, 102.0, decision, 1, 200.0) == "busy"
        await stores[0].pause_schedule("raced", True, 200.0)
        assert (
            await stores[0].fire_schedule("raced", 101.0, 102.0, decision, None, 200.0) == "moved"
        )
    finally:
        for store in stores:
            await store.close()
