"""Bounded sub-workflow trees on every backend: a workflow that starts itself (directly or through
another) stops at the depth limit, a fan-out stops at the descendants limit, and a cancel reaches a
whole tree set-wise, so nothing under it starts again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from legato import Engine
from legato.cli import main
from legato.engine.lineage import RunFilter, RunLimits
from legato.engine.state import RunState, StepDone
from legato.errors import Conflict, NotFound
from legato.server.errors import error_response
from legato.store import faults
from tests.integration.treebuild import WORKFLOW, build_tree

SELF = {"name": "rec-self", "steps": {"me": {"workflow": "rec-self"}}}
PING = {"name": "ping", "steps": {"pong": {"workflow": "pong"}}}
PONG = {"name": "pong", "steps": {"ping": {"workflow": "ping"}}}
# Two children per run, each after a short wait: a tree that keeps growing until stopped.
FAN_STEPS: dict[str, Any] = {
    "nap": {"wait": "0.05s"},
    "a": {"depends_on": "nap", "workflow": "fan"},
    "b": {"depends_on": "nap", "workflow": "fan"},
}
FAN = {"name": "fan", "steps": FAN_STEPS}


async def all_runs(engine: Engine) -> list[Any]:
    return await engine.store.list_runs(limit=1_000_000)


async def deepest_error(engine: Engine, state: RunState, step: str) -> dict[str, Any]:
    """Follow the failed sub-workflow steps down to the one that failed by itself."""
    while True:
        s = state.steps[step]
        assert s.error is not None
        if s.error.get("kind") != "child":
            return s.error
        state = await engine.get_run(s.error["run_id"])
        step = next(n for n, x in state.steps.items() if x.status == "failed")


async def settle(engine: Engine, seconds: float = 0.5) -> int:
    """Wait until the number of runs stops changing; returns it."""
    count = -1
    while True:
        await asyncio.sleep(seconds)
        now = len(await all_runs(engine))
        if now == count:
            return count
        count = now


async def test_a_workflow_that_starts_itself_stops_at_the_depth_limit(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply(SELF)
        run = await engine.run("rec-self", timeout=30)
        assert run.info.status == "failed"
        error = await deepest_error(engine, run, "me")
        assert error == {
            "kind": "limit",
            "message": "sub-workflow depth 16 reached (limit max_depth)",
        }
        assert len(await all_runs(engine)) == 17  # the root and 16 levels under it
        assert await settle(engine, 0.3) == 17
        assert engine.active_runs() == 0


async def test_recursion_through_another_workflow_is_limited_too(db_url: str) -> None:
    async with Engine.open(db_url, run_limits=RunLimits(max_depth=3)) as engine:
        await engine.apply(PING)
        await engine.apply(PONG)
        run = await engine.run("ping", timeout=30)
        assert run.info.status == "failed"
        error = await deepest_error(engine, run, "pong")
        assert error["kind"] == "limit" and "(limit max_depth)" in error["message"]
        runs = await all_runs(engine)
        assert sorted(r.workflow for r in runs) == ["ping", "ping", "pong", "pong"]


async def test_a_fan_out_stops_at_the_descendants_limit(db_url: str) -> None:
    limits = RunLimits(max_depth=50, max_descendants=20)
    async with Engine.open(db_url, run_limits=limits) as engine:
        await engine.apply(FAN)
        root = await engine.start_run("fan")
        await engine.wait(root, timeout=30)
        assert await settle(engine, 0.3) == 21  # the root and 20 descendants
        state = await engine.get_run(root)
        assert state.info.status == "failed"
        limited = []
        for info in await all_runs(engine):
            for s in (await engine.get_run(info.id)).steps.values():
                if s.error and s.error["kind"] == "limit":
                    limited.append(s.error["message"])
        assert limited and set(limited) == {
            f"20 descendant runs of root run {root} reached (limit max_descendants)"
        }


async def test_cancelling_a_growing_tree_stops_it_all(db_url: str) -> None:
    limits = RunLimits(max_depth=50, max_descendants=100_000)
    async with Engine.open(db_url, run_limits=limits) as engine:
        await engine.apply(FAN)
        root = await engine.start_run("fan")
        while len(await all_runs(engine)) < 60:
            await asyncio.sleep(0.02)
        await engine.cancel(root)
        runs = await all_runs(engine)
        assert {r.status for r in runs} == {"cancelled"}, [r.status for r in runs]
        count = len(runs)
        await asyncio.sleep(1.0)  # long enough for many more levels, were any still going
        after = await all_runs(engine)
        assert len(after) == count and {r.status for r in after} == {"cancelled"}
        assert engine.active_runs() == 0
        root_state = await engine.get_run(root)
        assert root_state.info.error == {"kind": "cancelled", "message": "cancelled by request"}
        child = next(r for r in after if r.parent is not None and r.parent[0] == root)
        assert (await engine.get_run(child.id)).info.error == {
            "kind": "cancelled",
            "message": f"its parent run {root} stopped",
        }
        with pytest.raises(Conflict, match="already ended"):
            await engine.cancel(root)
        with pytest.raises(NotFound):
            await engine.cancel("f" * 32)


async def test_a_big_parked_tree_is_cancelled_in_one_go(db_url: str) -> None:
    n = 3000
    async with Engine.open(db_url) as engine:
        await engine.apply(WORKFLOW)
        root = await build_tree(engine.store, n)
        began = time.monotonic()
        await engine.cancel(root)
        took = time.monotonic() - began
        runs = await all_runs(engine)
        assert len(runs) == n + 1 and {r.status for r in runs} == {"cancelled"}
        assert took < 5.0, took
        some = await engine.get_run(runs[len(runs) // 2].id)
        assert some.steps["me"].status == "cancelled"
        assert await settle(engine, 0.3) == n + 1


async def test_a_cancelled_child_reports_to_its_parent(db_url: str) -> None:
    """Cancelling a sub-workflow's run (not its root) fails the parent's step, as before."""
    async with Engine.open(db_url) as engine:
        await engine.apply({"name": "leaf", "steps": {"w": {"wait": "60s"}}})
        await engine.apply({"name": "mid", "steps": {"l": {"workflow": "leaf"}}})
        await engine.apply({"name": "top", "steps": {"m": {"workflow": "mid"}}})
        top = await engine.start_run("top")
        while len(await all_runs(engine)) < 3:
            await asyncio.sleep(0.02)
        mid = next(r for r in await all_runs(engine) if r.workflow == "mid")
        await engine.cancel(mid.id)
        state = await engine.wait(top, timeout=10)
        assert state.info.status == "failed"
        assert state.steps["m"].error is not None
        assert state.steps["m"].error["kind"] == "child"
        assert "cancelled" in state.steps["m"].error["message"]
        assert {r.workflow: r.status for r in await all_runs(engine)} == {
            "top": "failed",
            "mid": "cancelled",
            "leaf": "cancelled",
        }


async def test_bulk_cancel_and_retry_by_filter(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply({"name": "slow", "steps": {"w": {"wait": "60s"}}})
        await engine.apply({"name": "other", "steps": {"w": {"wait": "60s"}}})
        slow = [await engine.start_run("slow") for _ in range(5)]
        other = await engine.start_run("other")
        assert await engine.cancel_runs(RunFilter()) == []  # an empty filter matches nothing
        ids = await engine.cancel_runs(RunFilter(workflow="slow", status="running"))
        assert sorted(ids) == sorted(slow)
        assert (await engine.get_run(other)).info.status == "running"
        retried = await engine.retry_runs(RunFilter(workflow="slow", status="cancelled"))
        assert sorted(retried) == sorted(slow)
        for run_id in slow:
            while (await engine.get_run(run_id)).info.status != "running":
                await asyncio.sleep(0.02)
        assert await engine.retry_runs(RunFilter(workflow="slow", status="cancelled")) == []
        everything = await engine.cancel_runs(RunFilter(everything=True))
        assert sorted(everything) == sorted([*slow, other])


STARTED: asyncio.Event | None = None
RELEASED: asyncio.Event | None = None


async def held() -> dict[str, bool]:
    """A Python step that runs (its run held by its engine) until the test lets it end."""
    assert STARTED is not None and RELEASED is not None
    STARTED.set()
    await RELEASED.wait()
    return {"through": True}


HELD = {
    "name": "held",
    "steps": {
        "work": {"python": {"function": "tests.integration.test_run_trees:held"}},
        "next": {"depends_on": "work", "workflow": "held"},
    },
}
HOLDER = {"name": "holder", "steps": {"h": {"workflow": "held"}}}


async def test_a_run_held_with_a_step_under_way_is_let_go_and_stays_cancelled(
    db_url: str,
) -> None:
    global STARTED, RELEASED
    STARTED, RELEASED = asyncio.Event(), asyncio.Event()
    async with Engine.open(db_url) as engine:
        await engine.apply(HELD)
        await engine.apply(HOLDER)
        root = await engine.start_run("holder")
        await asyncio.wait_for(STARTED.wait(), 10)
        child = next(r.id for r in await all_runs(engine) if r.workflow == "held")
        assert engine.live_run(child) is not None  # held here, its step under way
        assert sorted(await engine.cancel_runs(RunFilter(workflow="holder"))) == sorted(
            [root, child]
        )
        assert engine.live_run(child) is None
        RELEASED.set()  # the step would end now: nothing of it is written
        await asyncio.sleep(0.5)
        state = await engine.get_run(child)
        assert state.info.status == "cancelled" and state.steps["work"].status == "cancelled"
        assert len(await all_runs(engine)) == 2


async def test_another_engine_lets_go_of_the_runs_a_cancel_took(shared_db: str) -> None:
    global STARTED, RELEASED
    STARTED, RELEASED = asyncio.Event(), asyncio.Event()
    async with Engine.open(shared_db) as worker, Engine.open(shared_db, worker=False) as api:
        await api.apply(HELD)
        root = await api.start_run("held")
        await asyncio.wait_for(STARTED.wait(), 10)
        assert worker.live_run(root) is not None
        await api.cancel(root)
        deadline = time.monotonic() + 5
        while worker.live_run(root) is not None:  # told by the cancel's notice
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        RELEASED.set()
        await asyncio.sleep(0.5)
        state = await api.get_run(root)
        assert state.info.status == "cancelled" and state.steps["work"].status == "cancelled"
        assert [r.id for r in await all_runs(api)] == [root]


async def test_several_workers_never_pass_the_descendants_limit(shared_db: str) -> None:
    limits = RunLimits(max_depth=50, max_descendants=40)
    async with (
        Engine.open(shared_db, run_limits=limits),
        Engine.open(shared_db, run_limits=limits),
        Engine.open(shared_db, worker=False) as api,
    ):
        quick: dict[str, Any] = {**FAN_STEPS, "nap": {"wait": "0s"}}
        await api.apply({"name": "fan", "steps": quick})
        root = await api.start_run("fan")
        await api.wait(root, timeout=30)
        assert await settle(api, 0.5) == 41  # the root and exactly 40 descendants


async def test_a_tree_growing_on_several_workers_stops_when_cancelled(shared_db: str) -> None:
    limits = RunLimits(max_depth=50, max_descendants=100_000)
    async with (
        Engine.open(shared_db, run_limits=limits),
        Engine.open(shared_db, run_limits=limits),
        Engine.open(shared_db, worker=False) as api,
    ):
        await api.apply(FAN)
        root = await api.start_run("fan")
        while len(await all_runs(api)) < 80:
            await asyncio.sleep(0.02)
        await api.cancel(root)
        count = len(await all_runs(api))
        await asyncio.sleep(1.0)
        after = await all_runs(api)
        assert len(after) == count and {r.status for r in after} == {"cancelled"}


async def test_a_decision_queued_before_a_cancel_writes_nothing(db_url: str) -> None:
    """A step's end decided just before a set-wise cancel, committed just after it: the run the
    cancel took is not written back as running (nor its next step started)."""
    global STARTED, RELEASED
    STARTED, RELEASED = asyncio.Event(), asyncio.Event()
    async with Engine.open(db_url) as engine:
        await engine.apply(HELD)
        root = await engine.start_run("held")
        await asyncio.wait_for(STARTED.wait(), 10)
        active = engine._runs[root]
        attempt = active.state.steps["work"].attempt
        now = time.time()
        engine._decide(active, StepDone("work", attempt, True, {"through": True}, None, now, now))
        assert engine.commit_queue() == 1  # decided, not committed yet
        assert await engine.cancel_runs(RunFilter(ids=(root,))) == [root]
        await asyncio.sleep(0.5)
        state = await engine.get_run(root)
        assert state.info.status == "cancelled"
        assert {r.status for r in await all_runs(engine)} == {"cancelled"}
        if db_url.startswith("sqlite"):  # the commit waited for the cancel (PostgreSQL's may not)
            assert state.steps["work"].status == "cancelled"
            assert [r.id for r in await all_runs(engine)] == [root]
        RELEASED.set()


async def test_a_deep_tree_quotes_a_bounded_cause(tmp_path: Any) -> None:
    """Each level's error quotes the one below it: cut, so 60 levels do not make huge rows."""
    async with Engine.open(
        f"sqlite:///{tmp_path / 'deep.db'}", run_limits=RunLimits(max_depth=60)
    ) as engine:
        await engine.apply(SELF)
        run = await engine.run("rec-self", timeout=30)
        message = run.info.error["message"] if run.info.error else ""
        assert run.info.status == "failed" and len(message) < 2200
        assert message.endswith("...")


async def test_a_big_sqlite_cancel_leaves_the_event_loop_free(tmp_path: Any) -> None:
    """The cancel runs in the store's thread: a ticker on the loop keeps its pace, and store calls
    made meanwhile wait their turn and get their answers."""
    n = 30_000
    async with Engine.open(f"sqlite:///{tmp_path / 'big.db'}") as engine:
        await engine.apply(WORKFLOW)
        root = await build_tree(engine.store, n)
        lag = 0.0
        reads: list[int] = []

        async def tick() -> None:
            nonlocal lag
            while True:
                began = time.monotonic()
                await asyncio.sleep(0.005)
                lag = max(lag, time.monotonic() - began - 0.005)
                if len(reads) < 20:
                    reads.append(len(await engine.store.list_runs(limit=5)))

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await engine.cancel(root)
        took = time.monotonic() - began
        await asyncio.sleep(0.05)  # a tick held up by the cancel ends now
        ticker.cancel()
        runs = await all_runs(engine)
        assert len(runs) == n + 1 and {r.status for r in runs} == {"cancelled"}
        assert reads and set(reads) == {5}
        # On the loop, the ticker waited as long as the cancel (0.3-1 s here).
        assert lag < max(0.1, took / 3), (lag, took)


async def test_a_cancel_longer_than_the_store_timeout_completes(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a request, a tree's cancel is bounded by BULK_TIMEOUT, not the store timeout; past it the
    request hears Unfinished (a 503 that does not blame the database) and the cancel still commits."""
    n = 10_000
    async with Engine.open(db_url) as engine:
        await engine.apply(WORKFLOW)
        root = await build_tree(engine.store, n)

        async def in_a_request(run_id: str) -> None:
            token = faults.REQUEST_LIMIT.set(0.01)  # as a request does, with a short store timeout
            try:
                await engine.cancel(run_id)
            finally:
                faults.REQUEST_LIMIT.reset(token)

        began = time.monotonic()
        await in_a_request(root)
        took = time.monotonic() - began
        runs = await all_runs(engine)
        assert {r.status for r in runs} == {"cancelled"} and took > 0.01, took

        other = await build_tree(engine.store, n)
        monkeypatch.setattr(faults, "BULK_TIMEOUT", 0.01)
        with pytest.raises(faults.Unfinished) as caught:
            await in_a_request(other)
        answer = error_response(caught.value)
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        body = orjson.loads(answer.body)
        assert body["error"] == "unfinished" and "database" not in body["message"]
        assert "did not finish within 0.01 s" in body["message"]
        for _ in range(200):  # it goes on and commits whole
            state = await engine.get_run(other)
            if state.info.status == "cancelled":
                break
            await asyncio.sleep(0.05)
        runs = await all_runs(engine)
        assert len(runs) == 2 * (n + 1) and {r.status for r in runs} == {"cancelled"}


def test_tree_limits_fit_the_store() -> None:
    with pytest.raises(ValueError, match="max_descendants must be an integer from 1 to 2147483647"):
        RunLimits(max_descendants=99999999999999999999)
    with pytest.raises(ValueError, match="max_depth"):
        RunLimits(max_depth=1001)
    for command in ("serve", "worker"):
        result = CliRunner().invoke(main, [command, "--max-descendants", "99999999999999999999"])
        assert result.exit_code == 2 and "--max-descendants" in result.output, result.output
        assert "2147483647" in result.output
        result = CliRunner().invoke(main, [command], env={"LEGATO_MAX_DEPTH": "100000"})
        assert result.exit_code == 2 and "--max-depth" in result.output, result.output


async def test_cancelling_the_children_of_a_big_root_takes_its_whole_tree_only(db_url: str) -> None:
    """PostgreSQL finds a big root's tree by the root column: the root itself is not taken, nor
    another tree."""
    n = 2000
    async with Engine.open(db_url) as engine:
        await engine.apply(WORKFLOW)
        root = await build_tree(engine.store, n)
        other = await build_tree(engine.store, 20)
        ids = await engine.cancel_runs(RunFilter(parent=root))
        assert len(ids) == n and root not in ids
        status = {r.id: r.status for r in await all_runs(engine)}
        assert status[root] == status[other] == "running"
        assert sum(1 for s in status.values() if s == "running") == 22
