"""Run control (cancel, retry from the failed step), Python steps, maps and many runs at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from legato import Engine, Service, http, map_over, task, workflow
from legato.errors import Conflict, NotFound
from tests.integration.testservice import LoopbackService


async def test_cancel_stops_a_running_run(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        {
            "name": "wf",
            "steps": {
                "slow": {"http": {"service": "svc", "path": "/slow", "query": {"delay": 5}}},
                "after": {"depends_on": "slow", "http": {"service": "svc", "path": "/echo"}},
            },
        }
    )
    run_id = await engine.start_run("wf", {})
    while not service.seen("/slow"):
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await engine.cancel(run_id)
    run = await engine.wait(run_id, timeout=5)
    assert time.monotonic() - started < 1
    assert run.info.status == "cancelled"
    assert run.steps["slow"].status == "cancelled"
    assert run.steps["after"].status == "cancelled"
    assert service.seen("/echo") == []
    with pytest.raises(Conflict):
        await engine.cancel(run_id)


async def test_retry_runs_only_the_failed_steps(engine: Engine, service: LoopbackService) -> None:
    await engine.put_service(Service(name="later", base_url="http://127.0.0.1:9"))
    await engine.apply(
        {
            "name": "wf",
            "steps": {
                "first": {"http": {"service": "svc", "path": "/echo/first"}},
                "second": {
                    "depends_on": "first",
                    "http": {"service": "later", "path": "/echo/second"},
                    "retry": 0,
                },
                "third": {
                    "depends_on": "second",
                    "http": {"service": "svc", "path": "/echo/third"},
                },
            },
        }
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    assert run.steps["third"].status == "skipped"
    assert run.steps["third"].reason == "upstream_failed"
    with pytest.raises(Conflict):
        await engine.cancel(run.info.id)

    await engine.put_service(Service(name="later", base_url=service.url))  # the fix
    await engine.retry(run.info.id)
    again = await engine.wait(run.info.id, timeout=10)
    assert again.info.status == "succeeded", again.info.error
    assert len(service.seen("/echo/first")) == 1, "a succeeded step never runs again"
    assert len(service.seen("/echo/second")) == 1
    assert len(service.seen("/echo/third")) == 1
    assert again.steps["second"].attempt == 2
    with pytest.raises(Conflict):
        await engine.retry(run.info.id)


async def test_unknown_run_and_workflow(engine: Engine) -> None:
    with pytest.raises(NotFound):
        await engine.get_run("0" * 32)
    with pytest.raises(NotFound):
        await engine.start_run("nope", {})
    with pytest.raises(NotFound):
        await engine.retry("0" * 32)


async def test_python_dsl_workflow_with_sync_and_async_steps(
    engine: Engine, service: LoopbackService
) -> None:
    calls: list[str] = []

    @workflow(inputs={"words": "array"}, output="{{ steps.total.output }}")
    def count_words() -> None:
        fetch = http("fetch", service="svc", path="/echo", json={"words": "{{ input.words }}"})

        @task(args={"words": "{{ steps.fetch.output.body.echo.words }}"})
        def shout(words: list[str]) -> list[str]:
            calls.append("shout")
            return [w.upper() for w in words]

        @task(
            args={"words": "{{ steps.shout.output }}"},
            retries=2,
            retry_delay=0,
            retry={"on": ["exception"]},
        )
        async def total(words: list[str]) -> dict[str, Any]:
            calls.append("total")
            if calls.count("total") < 2:
                raise RuntimeError("flaky")
            return {"count": len(words), "words": words}

        fetch >> shout >> total

    await engine.register(count_words)
    run = await engine.run("count_words", {"words": ["a", "b"]}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert run.info.output == {"count": 2, "words": ["A", "B"]}
    assert calls == ["shout", "total", "total"]
    attempts = await engine.store.get_attempts(run.info.id)
    failed = [a for a in attempts if a.status == "failed"]
    assert failed[0].error is not None and failed[0].error["message"] == "RuntimeError: flaky"


async def test_map_calls_each_item_with_bounded_concurrency(
    engine: Engine, service: LoopbackService
) -> None:
    @workflow(
        inputs={"items": "array"},
        output="{{ steps.each.output | map(attribute='body.echo') | list }}",
    )
    def fan() -> None:
        map_over(
            "each",
            "{{ input.items }}",
            concurrency=4,
            http={
                "service": "svc",
                "path": "/slow",
                "query": {"delay": 0.02},
                "json": {"i": "{{ index }}", "v": "{{ item }}"},
            },
        )

    await engine.register(fan)
    run = await engine.run("fan", {"items": list(range(20))}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert run.info.output == [{"i": i, "v": i} for i in range(20)]
    assert service.max_in_flight == 4
    assert len({k for k in service.keys("/slow")}) == 20, "each item has its own idempotency key"


async def test_services_in_order_form(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        {
            "name": "chain",
            "services": [
                {"name": "one", "address": service.url + "/echo/one"},
                {"name": "two", "address": service.url + "/echo/two"},
            ],
            "inputs": [{"name": "message", "type": "string"}],
            "outputs": [{"name": "echo", "type": "object"}],
        }
    )
    assert engine.service("one") is not None
    run = await engine.run("chain", {"message": "hi"}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert service.seen("/echo/one")[0].json == {"message": "hi"}
    assert service.seen("/echo/two")[0].json == {
        "message": "hi",
        "echo": {"message": "hi"},
        "query": {},
    }
    assert run.info.output == {"echo": {"message": "hi", "echo": {"message": "hi"}, "query": {}}}


async def test_thousands_of_concurrent_runs(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        {
            "name": "wf",
            "steps": {
                "a": {
                    "http": {"service": "svc", "path": "/echo/a", "json": {"n": "{{ input.n }}"}}
                },
                "b": {
                    "depends_on": "a",
                    "http": {"service": "svc", "path": "/slow", "query": {"delay": 0.2}},
                },
                "c": {"depends_on": "b", "http": {"service": "svc", "path": "/echo/c"}},
            },
            "output": "{{ steps.a.output.body.echo.n }}",
        }
    )
    count = 2000
    ids = await asyncio.gather(*(engine.start_run("wf", {"n": i}) for i in range(count)))
    runs = await asyncio.gather(*(engine.wait(i, timeout=60) for i in ids))
    assert sorted(r.info.output for r in runs) == list(range(count))
    assert service.max_in_flight > 50, "runs wait on the slow step side by side"
    assert engine.active_runs() == 0


async def test_a_wait_survives_a_restart_neither_lost_nor_shortened(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    async with Engine.open(url) as engine:
        await engine.apply({"name": "nap", "steps": {"pause": {"wait": "1500ms"}}})
        began = time.time()
        run_id = await engine.start_run("nap", {})
        await asyncio.sleep(0.3)
    async with Engine.open(url) as engine:
        state = await engine.wait(run_id, timeout=10)
    ended = time.time()
    assert state.info.status == "succeeded"
    assert ended - began >= 1.5  # not shortened by the restart
    assert ended - began < 3.0  # nor restarted from zero, nor lost
    assert state.steps["pause"].output == {"until": pytest.approx(began + 1.5, abs=0.1)}
