"""Sub-workflows on a real engine: a step runs another workflow and takes its result; failures and
cancels cross the boundary; a restart neither loses nor duplicates the child run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from legato import Engine, Service
from tests.integration.testservice import LoopbackService

CHILD = {
    "name": "make-invoice",
    "inputs": [
        {"name": "order", "type": "string"},
        {"name": "delay", "type": "string", "required": False, "default": "0"},
    ],
    "steps": {
        "call": {
            "http": {
                "service": "svc",
                "path": "/slow",
                "query": {"delay": "{{ input.delay }}"},
                "json": {"order": "{{ input.order }}"},
            }
        }
    },
    "output": {"invoice": "INV-{{ steps.call.output.body.echo.order }}"},
}
PARENT = {
    "name": "order",
    "inputs": [
        {"name": "id", "type": "string"},
        {"name": "delay", "type": "string", "required": False, "default": "0"},
    ],
    "steps": {
        "invoice": {
            "workflow": {
                "name": "make-invoice",
                "input": {"order": "{{ input.id }}", "delay": "{{ input.delay }}"},
            }
        },
        "after": {
            "depends_on": "invoice",
            "http": {"service": "svc", "path": "/echo", "json": "{{ steps.invoice.output }}"},
        },
    },
    "output": "{{ steps.invoice.output.invoice }}",
}


async def test_a_step_runs_a_child_workflow_and_takes_its_output(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(CHILD)
    await engine.apply(PARENT)
    run = await engine.run("order", {"id": "A-1"}, timeout=10)
    assert run.info.status == "succeeded" and run.info.output == "INV-A-1"
    child_id = run.steps["invoice"].request["run_id"]
    child = await engine.get_run(child_id)
    assert (child.info.workflow, child.info.status) == ("make-invoice", "succeeded")
    assert service.seen("/echo")[0].json == {"invoice": "INV-A-1"}


async def test_a_failing_or_missing_child_fails_the_step(engine: Engine) -> None:
    await engine.apply({**CHILD, "steps": {"call": {"fail": "no paper"}}})
    await engine.apply(PARENT)
    run = await engine.run("order", {"id": "A-2"}, timeout=10)
    error = run.steps["invoice"].error
    assert run.info.status == "failed" and error is not None
    assert error["kind"] == "child" and "no paper" in error["message"]
    await engine.apply({"name": "orphan", "steps": {"x": {"workflow": "nowhere"}}})
    lost = await engine.run("orphan", {}, timeout=10)
    assert lost.steps["x"].error is not None and lost.steps["x"].error["kind"] == "config"
    await engine.apply(
        {
            "name": "badinput",
            "steps": {"x": {"workflow": {"name": "make-invoice", "input": {"order": 7}}}},
        }
    )
    bad = await engine.run("badinput", {}, timeout=10)
    assert bad.steps["x"].error is not None and bad.steps["x"].error["kind"] == "input"


async def test_cancelling_the_parent_cancels_the_child(engine: Engine) -> None:
    await engine.apply(CHILD)
    await engine.apply(PARENT)
    run_id = await engine.start_run("order", {"id": "A-3", "delay": "30"})
    for _ in range(200):
        child_id = (
            (engine.live_run(run_id) or (await engine.get_run(run_id))).step("invoice").request
        )
        if child_id and engine.live_run(child_id["run_id"]) is not None:
            break
        await asyncio.sleep(0.01)
    await engine.cancel(run_id)
    child = await engine.wait(child_id["run_id"], timeout=5)
    assert child.info.status == "cancelled"
    assert "its parent run" in (child.info.error or {}).get("message", "")


async def test_a_restart_neither_loses_nor_duplicates_the_child(
    tmp_path: Path, service: LoopbackService
) -> None:
    url = f"sqlite:///{tmp_path / 'sub.db'}"
    async with Engine.open(url) as engine:
        await engine.put_service(Service(name="svc", base_url=service.url))
        await engine.apply(CHILD)
        await engine.apply(PARENT)
        run_id = await engine.start_run("order", {"id": "A-4", "delay": "0.5"})
        while len(service.seen("/slow")) < 1:
            await asyncio.sleep(0.01)
    async with Engine.open(url) as engine:
        run = await engine.wait(run_id, timeout=10)
        listed = await engine.store.list_runs(workflow="make-invoice")
    assert run.info.status == "succeeded" and run.info.output == "INV-A-4"
    assert len(listed) == 1  # one child run, started once and resumed
    assert len({s.headers["Idempotency-Key"] for s in service.seen("/slow")}) == 1


async def test_a_parent_cancelled_as_it_starts_leaves_no_child_running(engine: Engine) -> None:
    await engine.apply(CHILD)
    await engine.apply(PARENT)
    for i in range(5):
        run_id = await engine.start_run("order", {"id": f"C-{i}", "delay": "30"})
        await engine.cancel(run_id)
    await asyncio.sleep(0.3)
    children = await engine.store.list_runs(workflow="make-invoice")
    assert all(c.status == "cancelled" for c in children), children


async def test_a_sub_workflow_step_timeout_fails_it_and_cancels_the_child(engine: Engine) -> None:
    await engine.apply(CHILD)
    invoice = {
        "workflow": {
            "name": "make-invoice",
            "input": {"order": "{{ input.id }}", "delay": "{{ input.delay }}"},
        }
    }
    await engine.apply(
        {
            "name": "impatient",
            "inputs": PARENT["inputs"],
            "steps": {"invoice": {**invoice, "timeout": "300ms"}},
        }
    )
    run = await engine.run("impatient", {"id": "T-1", "delay": "30"}, timeout=10)
    step = run.steps["invoice"]
    assert run.info.status == "failed" and step.error is not None
    assert step.error["kind"] == "timeout" and "did not end within" in step.error["message"]
    child = await engine.wait(step.request["run_id"], timeout=5)
    assert child.info.status == "cancelled"
