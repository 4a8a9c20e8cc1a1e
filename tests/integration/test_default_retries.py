"""Retries by default against a real service on loopback that answers as each test scripts it,
on SQLite and PostgreSQL: 503, 503, 200 succeeds with no retry setting; `Retry-After` holds the
next attempt back; a 4xx is not retried; a service's and a step's setting override the default."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from legato import Engine, Service


class Scripted:
    """Answers each call to /{name} with the next (status, headers) of its script, then 200; keeps
    the time each call arrived."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.calls: dict[str, list[float]] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def answer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.setdefault(name, []).append(time.monotonic())
        script = self.scripts.get(name) or []
        status, headers = script.pop(0) if script else (200, {})
        return web.json_response({"calls": len(self.calls[name])}, status=status, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{name}", self.answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    svc = Scripted()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def eng(db_url: str) -> AsyncIterator[Engine]:
    async with Engine.open(db_url) as engine:
        yield engine


def one_call(path: str, **step: Any) -> dict[str, Any]:
    return {"name": path, "steps": {"call": {"http": {"service": "flaky", "path": path}, **step}}}


async def test_503_twice_then_200_succeeds_with_no_retry_setting(
    eng: Engine, scripted: Scripted
) -> None:
    scripted.scripts["order"] = [(503, {}), (503, {})]
    await eng.apply(
        {
            "name": "in-order",
            "services": [{"name": "orders", "address": f"{scripted.url}/order"}],
        }
    )
    run = await eng.run("in-order", {}, timeout=20)
    assert run.info.status == "succeeded", run.info.error
    assert run.info.output == {"calls": 3}
    times = scripted.calls["order"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 3 and gaps[0] >= 0.5 and gaps[1] >= 1.0  # 1 s then 2 s, jittered to half


async def test_retry_after_holds_the_next_attempt_back(eng: Engine, scripted: Scripted) -> None:
    await eng.put_service(Service(name="flaky", base_url=scripted.url, timeout=5))
    scripted.scripts["busy"] = [(429, {"Retry-After": "2"})]
    # A backoff of 10 ms: only the answer's Retry-After can make the second call wait 2 s.
    await eng.apply(one_call("busy", retry={"delay": "10ms"}))
    run = await eng.run("busy", {}, timeout=20)
    assert run.info.status == "succeeded", run.info.error
    first, second = scripted.calls["busy"]
    assert second - first >= 2.0
    assert run.steps["call"].attempt == 2


async def test_a_4xx_is_not_retried(eng: Engine, scripted: Scripted) -> None:
    await eng.put_service(Service(name="flaky", base_url=scripted.url, timeout=5))
    scripted.scripts["missing"] = [(404, {})]
    await eng.apply(one_call("missing"))
    run = await eng.run("missing", {}, timeout=20)
    assert run.info.status == "failed"
    assert run.steps["call"].error is not None and run.steps["call"].error["kind"] == "4xx"
    assert len(scripted.calls["missing"]) == 1


async def test_a_services_retries_0_fails_at_the_first_503_and_a_step_overrides_it(
    eng: Engine, scripted: Scripted
) -> None:
    service = Service.from_dict({"name": "flaky", "base_url": scripted.url, "retry": 0})
    await eng.put_service(service)
    scripted.scripts["down"] = [(503, {}), (503, {})]
    await eng.apply(one_call("down"))
    run = await eng.run("down", {}, timeout=20)
    assert run.info.status == "failed"
    assert run.steps["call"].error is not None and run.steps["call"].error["kind"] == "5xx"
    assert len(scripted.calls["down"]) == 1

    scripted.scripts["again"] = [(503, {}), (503, {})]
    await eng.apply(one_call("again", retry={"retries": 2, "delay": "10ms"}))
    run = await eng.run("again", {}, timeout=20)
    assert run.info.status == "succeeded", run.info.error
    assert len(scripted.calls["again"]) == 3
