"""Run ids the engine derives (a scheduled interval's, a sub-workflow run's) cannot be taken by a
caller: they carry a reserved mark callers' ids may not have. Where one is taken all the same (ids
made before the mark existed), the scheduler says so and a parent's step fails instead of waiting
on a run that is not its child. Both backends (`db_url`)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from legato import Engine
from legato.engine import decider
from legato.engine.ids import child_run_id, new_run_id, reserved, scheduled_run_id
from legato.engine.starts import Once, check_run_id

OTHER = {"name": "squatter", "steps": {"nap": {"wait": "10m"}}}  # live until cancelled
KID = {"name": "kid", "steps": {"a": {"wait": "10ms"}}, "output": "kid-done"}
PARENT = {"name": "par", "steps": {"sub": {"workflow": "kid"}}}


def test_every_id_the_engine_makes_is_of_the_reserved_form() -> None:
    made = [new_run_id(), child_run_id(new_run_id(), "s", 1, time.time())]
    made.append(scheduled_run_id("w", 1_700_000_000.0))
    for run_id in made:
        assert reserved(run_id) and len(run_id) == 32
        problem = check_run_id(run_id)
        assert problem is not None and "reserved" in problem
    for _ in range(50):  # a UUID's hex (the advice for a caller's id) is never refused
        assert check_run_id(uuid.uuid4().hex) is None
        assert check_run_id(uuid.uuid5(uuid.NAMESPACE_URL, str(uuid.uuid4())).hex) is None


async def test_a_child_id_held_by_another_run_fails_the_parents_step(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with a child id made before the reserved form, chosen by a caller first: the step fails
    with kind `conflict` naming the run, for a run of another workflow and for one that is of the
    same workflow but not this step's child; without the check the parent waited forever."""
    async with Engine.open(db_url) as engine:
        for wf in (OTHER, KID, PARENT):
            await engine.apply(wf)
        other = uuid.uuid4().hex
        await engine.start_run("squatter", run_id=other, once=Once(run_id=other))
        stray = uuid.uuid4().hex
        await engine.start_run("kid", run_id=stray, once=Once(run_id=stray))
        await engine.wait(stray, 10)
        for taken, workflow in ((other, "squatter"), (stray, "kid")):
            monkeypatch.setattr(decider, "child_run_id", lambda *_, t=taken: t)
            run = await engine.run("par", {}, timeout=10)
            error = run.steps["sub"].error
            assert run.info.status == "failed" and error is not None, run
            assert error["kind"] == "conflict" and taken in error["message"], error
            assert repr(workflow) in error["message"]
        monkeypatch.undo()
        assert (await engine.run("par", {}, timeout=10)).info.status == "succeeded"
        assert (await engine.get_run(other)).info.status == "running"  # left alone
        await engine.cancel(other)


async def test_the_scheduler_says_when_another_workflows_run_holds_an_intervals_id(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = float(int(time.time()) - 2)
    taken = scheduled_run_id("ticks", first)
    caplog.set_level(logging.WARNING, logger="legato.engine")
    async with Engine.open(db_url) as engine:
        await engine.apply(OTHER)
        await engine.start_run("squatter", run_id=taken, once=Once(run_id=taken))
        await engine.apply(
            {
                "name": "ticks",
                "schedule": "1s",
                "start_date": first,
                "steps": {"nap": {"wait": "10ms"}},
            }
        )
        deadline = time.monotonic() + 10
        while len(runs := await engine.store.list_runs(workflow="ticks", limit=100)) < 2:
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.05)
        starts = sorted(r.input["schedule"]["interval_start_ts"] for r in runs)
        assert starts[0] == first + 1  # the taken interval ran no run; the next ones did
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(taken in m and "another workflow" in m for m in said), said
        await engine.cancel(taken)
