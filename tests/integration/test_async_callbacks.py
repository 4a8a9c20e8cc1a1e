"""Async calls against a real server: the service accepts at once, and reports later by POSTing to the
callback URL it was given. Tokens are signed, single-use per attempt, and survive a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato import Engine
from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService


def job(name: str, **http: Any) -> dict[str, Any]:
    retry = http.pop("retry", None)
    timeout = http.pop("timeout", None)
    step: dict[str, Any] = {
        "http": {"service": "svc", "path": "/status/202", "async": True, **http}
    }
    if retry is not None:
        step["retry"] = retry
    if timeout is not None:
        step["timeout"] = timeout
    return {"name": name, "steps": {"job": step}, "output": "{{ steps.job.output }}"}


async def accepted(service: LoopbackService, count: int = 1) -> list[dict[str, str]]:
    """The headers of the first `count` async requests the service received."""
    for _ in range(500):
        seen = service.seen("/status/202")
        if len(seen) >= count:
            return [s.headers for s in seen[:count]]
        await asyncio.sleep(0.01)
    raise AssertionError(f"the service saw {len(service.seen('/status/202'))} async calls")


async def test_a_callback_with_output_completes_the_step(
    api: AsyncClient, server: ServerProcess, service: LoopbackService
) -> None:
    await api.apply(job("cb-output"))
    run = await api.start("cb-output", {})
    (headers,) = await accepted(service)
    url, token = headers["Legato-Callback-Url"], headers["Legato-Task-Token"]
    assert url == f"{server.url}/api/callbacks/{token}"
    waiting = await api.run(run["id"])
    assert waiting["status"] == "running"
    assert waiting["steps"][0]["status"] == "waiting"
    assert waiting["steps"][0]["reason"] == "callback"
    async with httpx.AsyncClient() as http:
        answer = await http.post(url, json={"output": {"invoice": "INV-9"}})
        assert answer.status_code == 200 and answer.json() == {"status": "accepted"}
        again = await http.post(url, json={"output": {"invoice": "INV-10"}})
        assert again.status_code == 409  # a second completion changes nothing
        forged = await http.post(url[:-4] + "AAAA", json={"output": 1})
        assert forged.status_code == 404
        unknown = await http.post(f"{server.url}/api/callbacks/nonsense", json={"output": 1})
        assert unknown.status_code == 404
    done = await api.wait(run["id"], timeout=10)
    assert done["status"] == "succeeded"
    assert done["output"] == {"invoice": "INV-9"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"output": 1, "error": "x"}, "body"),
        ({}, "body"),
        ({"heartbeat": False}, "heartbeat"),
        ({"error": 7}, "error"),
        ({"result": 1}, "result"),
    ],
)
async def test_a_malformed_report_is_refused_and_the_step_keeps_waiting(
    api: AsyncClient, service: LoopbackService, body: dict[str, Any], field: str
) -> None:
    await api.apply(job("cb-bad"))
    run = await api.start("cb-bad", {})
    (headers,) = await accepted(service)
    async with httpx.AsyncClient() as http:
        answer = await http.post(headers["Legato-Callback-Url"], json=body)
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["path"] == field
    assert (await api.run(run["id"]))["steps"][0]["status"] == "waiting"
    await api.cancel(run["id"])


async def test_a_reported_error_retries_with_a_new_token(
    api: AsyncClient, service: LoopbackService
) -> None:
    await api.apply(job("cb-error", retry={"retries": 1, "delay": "10ms", "on": ["callback"]}))
    run = await api.start("cb-error", {})
    (first,) = await accepted(service)
    async with httpx.AsyncClient() as http:
        answer = await http.post(first["Legato-Callback-Url"], json={"error": "printer on fire"})
        assert answer.status_code == 200
        _, second = await accepted(service, 2)
        assert second["Legato-Task-Token"] != first["Legato-Task-Token"]
        # A new job, under its own key: a deduplicating service must not hand back the first.
        assert second["Idempotency-Key"] == first["Idempotency-Key"][:-1] + "2"
        stale = await http.post(first["Legato-Callback-Url"], json={"output": 1})
        assert stale.status_code == 409  # the first attempt is over
        await http.post(second["Legato-Callback-Url"], json={"error": {"message": "still on fire"}})
    done = await api.wait(run["id"], timeout=10)
    assert done["status"] == "failed"
    attempts = done["steps"][0]["attempts"]
    assert [a["error"]["message"] for a in attempts] == ["printer on fire", "still on fire"]
    assert all(a["error"]["kind"] == "callback" for a in attempts)


async def test_heartbeats_keep_a_long_job_alive_and_silence_times_it_out(
    api: AsyncClient, service: LoopbackService
) -> None:
    await api.apply(job("cb-beat", heartbeat="500ms", timeout="10s", retry=0))
    alive = await api.start("cb-beat", {})
    (headers,) = await accepted(service)
    async with httpx.AsyncClient() as http:
        for _ in range(5):  # 1.25 s in all: past the 500 ms heartbeat interval, kept alive
            await asyncio.sleep(0.25)
            beat = await http.post(headers["Legato-Callback-Url"], json={"heartbeat": True})
            assert beat.json() == {"status": "extended"}
        await http.post(headers["Legato-Callback-Url"], json={"output": "done"})
    assert (await api.wait(alive["id"], timeout=10))["status"] == "succeeded"
    silent = await api.start("cb-beat", {})
    done = await api.wait(silent["id"], timeout=10)
    assert done["status"] == "failed"
    assert done["steps"][0]["error"] == {"kind": "timeout", "message": "no heartbeat within 0.5s"}


async def test_a_callback_after_a_restart_completes_the_step(
    tmp_path: Path, service: LoopbackService
) -> None:
    first = start_server(tmp_path, env={"LEGATO_API_TOKEN": "tok"}, name="first")
    async with AsyncClient(first.url, token="tok") as api:
        await api.add_service({"name": "svc", "base_url": service.url})
        await api.apply(job("cb-restart"))
        run = await api.start("cb-restart", {})
    (headers,) = await accepted(service)
    first.stop()
    again = start_server(tmp_path, db=first.db, env={"LEGATO_API_TOKEN": "tok"}, name="again")
    try:
        token = headers["Legato-Task-Token"]
        async with httpx.AsyncClient() as http:  # no API token: the task token is the credential
            answer = await http.post(f"{again.url}/api/callbacks/{token}", json={"output": "late"})
        assert answer.status_code == 200, answer.text
        async with AsyncClient(again.url, token="tok") as api:
            done = await api.wait(run["id"], timeout=10)
        assert (done["status"], done["output"]) == ("succeeded", "late")
        assert len(service.seen("/status/202")) == 1  # the accepted call was not sent again
    finally:
        again.stop()


async def test_an_embedded_engine_without_a_server_cannot_make_async_calls(
    engine: Engine,
) -> None:
    await engine.apply(job("cb-embedded"))
    run = await engine.run("cb-embedded", {}, timeout=5)
    assert run.info.status == "failed"
    assert run.steps["job"].error is not None
    assert "needs a callback address" in run.steps["job"].error["message"]


async def test_a_callback_that_comes_before_the_answer_to_the_call_counts(
    api: AsyncClient, service: LoopbackService
) -> None:
    await api.apply(
        {
            "name": "cb-fast",
            "steps": {
                "job": {
                    "http": {
                        "service": "svc",
                        "path": "/callback-first",
                        "async": True,
                        "json": {"n": 1},
                    }
                }
            },
            "output": "{{ steps.job.output }}",
        }
    )
    done = await api.start("cb-fast", {}, wait=10)
    assert done["status"] == "succeeded"
    assert done["output"] == {"early": True, "echo": {"n": 1}}
    assert service.early_reports == [200]


async def test_a_token_with_odd_characters_is_unknown(server: ServerProcess) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{server.url}/api/callbacks/a.b.c.%C3%A9", json={"output": 1})
    assert answer.status_code == 404
