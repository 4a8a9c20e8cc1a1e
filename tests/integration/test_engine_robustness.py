"""The engine keeps going whatever a run produces: values JSON cannot hold, functions that raise what
they should not, retries racing, blocking functions in numbers, and its own bugs."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from legato import Client, Conflict, Engine, Service
from legato.engine import python_executor, runtime
from legato.model.limits import DEFAULT_MAX_STEPS
from tests.integration.serverprocess import start_server
from tests.integration.testservice import LoopbackService


def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


CALLS: list[int] = []


def record(n: int) -> int:
    CALLS.append(n)
    time.sleep(0.3)
    return n


def raises_cancelled() -> None:
    raise asyncio.CancelledError("from inside the function")


async def raises_cancelled_async() -> None:
    raise asyncio.CancelledError("from inside the coroutine")


async def test_values_json_cannot_hold_are_stored_and_the_engine_goes_on(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(
        {
            "name": "unstorable",
            "steps": {"deep": {"http": {"service": "svc", "path": "/deep", "method": "GET"}}},
            "output": {"big": "{{ 2 ** 64 }}", "deep": "{{ steps.deep.output.body | length }}"},
        }
    )
    run = await engine.run("unstorable", {}, timeout=10)
    assert run.info.status == "succeeded"
    assert run.info.output == {"big": float(2**64), "deep": 1}  # written the way json writes it
    assert run.steps["deep"].output is not None  # the 300-deep reply was kept in some form
    again = await engine.run("unstorable", {}, timeout=10)  # commits still go through
    assert again.info.status == "succeeded"


async def test_blocking_functions_run_side_by_side(engine: Engine) -> None:
    await engine.apply(
        {
            "name": "naps",
            "steps": {
                "each": {
                    "map": {
                        "over": "{{ [0.3] * 8 }}",
                        "concurrency": 8,
                        "step": {
                            "python": {
                                "function": f"{__name__}:sleeper",
                                "args": {"seconds": "{{ item }}"},
                            }
                        },
                    }
                }
            },
        }
    )
    began = time.monotonic()
    run = await engine.run("naps", {}, timeout=10)
    assert run.info.status == "succeeded"
    assert time.monotonic() - began < 1.5  # eight 0.3 s naps at once, not one after another


async def test_a_call_cancelled_before_a_thread_takes_it_never_runs(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(python_executor, "MAX_THREADS", 1)
    CALLS.clear()
    pool = python_executor._DaemonPool()
    first = asyncio.ensure_future(pool.run(lambda: record(1)))
    second = asyncio.ensure_future(pool.run(lambda: record(2)))
    await asyncio.sleep(0.05)
    second.cancel()
    assert await first == 1
    await asyncio.sleep(0.4)
    assert CALLS == [1]
    pool.close()


async def test_a_function_raising_cancelled_error_fails_its_step(engine: Engine) -> None:
    for fn in ("raises_cancelled", "raises_cancelled_async"):
        await engine.apply(
            {
                "name": fn.replace("_", "-"),
                "steps": {"f": {"python": {"function": f"{__name__}:{fn}"}}},
            }
        )
        run = await engine.run(fn.replace("_", "-"), {}, timeout=5)
        assert run.info.status == "failed", fn
        assert run.steps["f"].error is not None
        assert "CancelledError" in run.steps["f"].error["message"]
    assert engine.steps_in_flight() == 0


async def test_two_retries_of_one_run_start_it_once(
    tmp_path: Path, service: LoopbackService
) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'full.db'}?synchronous=full") as engine:
        await engine.put_service(Service(name="svc", base_url=service.url))
        await engine.apply(
            {
                "name": "flaky",
                "steps": {
                    "s": {
                        "http": {"service": "svc", "path": "/flaky", "query": {"fail": "1"}},
                        "retry": 0,
                    }
                },
            }
        )
        run_id = await engine.start_run("flaky", {})
        assert (await engine.wait(run_id, 10)).info.status == "failed"
        results = await asyncio.gather(
            *(engine.retry(run_id) for _ in range(5)), return_exceptions=True
        )
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, Conflict) for r in results if r is not None)
        assert (await engine.wait(run_id, 10)).info.status == "succeeded"
        assert len(service.seen("/flaky")) == 2  # the first try and one retry


async def test_a_decider_error_fails_the_run_instead_of_stranding_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.apply(
        {"name": "doomed", "steps": {"a": {"http": {"service": "svc", "path": "/echo"}}}}
    )

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(runtime, "decide", broken)
    run_id = await engine.start_run("doomed", {})
    state = await engine.wait(run_id, 5)
    assert state.info.status == "failed"
    assert state.info.error is not None and state.info.error["kind"] == "internal"
    assert "RuntimeError: a bug" in state.info.error["message"]


async def test_closing_the_engine_ends_its_idle_worker_threads(tmp_path: Path) -> None:
    before = {t for t in threading.enumerate() if t.name == "legato-python"}
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        await engine.apply(
            {
                "name": "nap",
                "steps": {
                    "f": {"python": {"function": f"{__name__}:sleeper", "args": {"seconds": 0}}}
                },
            }
        )
        assert (await engine.run("nap", {}, timeout=5)).info.status == "succeeded"
    for _ in range(50):
        now = {t for t in threading.enumerate() if t.name == "legato-python"}
        if now <= before:
            break
        await asyncio.sleep(0.02)
    assert now <= before


def instant_chain(name: str, n: int = DEFAULT_MAX_STEPS) -> dict[str, object]:
    """The longest chain a definition may have, of steps that all end in the first decision."""
    steps: dict[str, object] = {"s0": {"wait": "0s"}}
    steps.update({f"s{i}": {"wait": "0s", "depends_on": f"s{i - 1}"} for i in range(1, n)})
    return {"name": name, "steps": steps}


async def test_a_chain_of_the_most_instant_steps_succeeds(engine: Engine) -> None:
    """It failed with kind `internal` (RecursionError) from ~200 steps, though 2,000 may register."""
    await engine.apply(instant_chain("chain"))
    run = await engine.run("chain", {}, timeout=60)
    assert run.info.status == "succeeded", run.info.error
    assert len(run.steps) == DEFAULT_MAX_STEPS
    assert all(s.status == "succeeded" for s in run.steps.values())


def test_a_chain_of_the_most_instant_steps_succeeds_through_the_server(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with Client(server.url) as client:
            client.apply(instant_chain("chain"))
            run = client.start("chain", {}, wait=25)
        assert run["status"] == "succeeded", run.get("error")
        assert "RecursionError" not in server.output()
    finally:
        server.stop()


async def test_a_decider_error_logs_one_line_and_the_last_frames(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A RecursionError's whole traceback was ~2,000 lines, written at every run of the workflow."""
    await engine.apply({"name": "deep", "steps": {"a": {"wait": "0s"}}})

    def deep(*args: object, depth: int = 0) -> None:
        deep(depth=depth + 1)

    monkeypatch.setattr(runtime, "decide", deep)
    with caplog.at_level(logging.ERROR, logger="legato.engine"):
        run_id = await engine.start_run("deep", {})
        state = await engine.wait(run_id, 5)
    assert state.info.error is not None and state.info.error["kind"] == "internal"
    [record] = [r for r in caplog.records if "deciding" in r.getMessage()]
    text = caplog.text
    assert record.exc_info is None and run_id in record.getMessage()
    assert "RecursionError: maximum recursion depth exceeded" in record.getMessage()
    assert len(text.splitlines()) < 30, text
