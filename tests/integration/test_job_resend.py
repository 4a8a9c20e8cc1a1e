"""A job submission that timed out, against a real server and a real service that deduplicates on
`Idempotency-Key`: not sent again by default (the service may have the job), and under a policy
naming `timeout` sent again as a new job, whose own key, token and callback complete the step."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from legato.client import AsyncClient


class DedupingJobs:
    """Accepts `POST /jobs` (202); a key seen before gets the same job back and nothing else. The
    first submission is answered too late (after the caller's timeout), as a slow gateway would;
    every job reports, once accepted, on the callback URL that came with the request creating it."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.jobs: dict[str, str] = {}  # Idempotency-Key -> the callback URL of its job
        self.reports: list[int] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        self.keys.append(key)
        if key not in self.jobs:
            self.jobs[key] = request.headers["Legato-Callback-Url"]
            task = asyncio.create_task(self.report(key, len(self.jobs)))
            self.tasks.add(task)
        if len(self.keys) == 1:
            await asyncio.sleep(1.5)  # the caller gave up at 0.5 s; the job exists all the same
        return web.json_response({"job": key}, status=202)

    async def report(self, key: str, number: int) -> None:
        await asyncio.sleep(1.0)  # after the first answer timed out (0.5 s)
        async with httpx.AsyncClient() as http:
            answer = await http.post(self.jobs[key], json={"output": {"job": number}})
        self.reports.append(answer.status_code)


@pytest.fixture
async def jobs() -> AsyncIterator[tuple[str, DedupingJobs]]:
    service = DedupingJobs()
    app = web.Application()
    app.router.add_post("/jobs", service.submit)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}", service
    for task in service.tasks:
        task.cancel()
    await runner.cleanup()


def workflow(name: str, retry: Any = None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "http": {"service": "jobs", "path": "/jobs", "method": "POST", "async": True},
        "timeout": "20s",
    }
    if retry is not None:
        step["retry"] = retry
    return {"name": name, "steps": {"job": step}, "output": "{{ steps.job.output }}"}


async def test_a_timed_out_job_submission_is_not_sent_again_by_default(
    api: AsyncClient, jobs: tuple[str, DedupingJobs]
) -> None:
    url, service = jobs
    await api.add_service({"name": "jobs", "base_url": url, "timeout": 0.5}, replace=True)
    await api.apply(workflow("resend-default"))
    run = await api.start("resend-default", {})
    done = await api.wait(run["id"], timeout=20)
    assert done["status"] == "failed"
    assert done["steps"][0]["error"]["kind"] == "timeout"
    assert service.keys == [f"{run['id']}:job:1"]  # sent once: the job may be running
    for _ in range(100):
        if service.reports:
            break
        await asyncio.sleep(0.05)
    assert service.reports == [409]  # its late report changes nothing


async def test_a_policy_naming_timeout_sends_a_new_job_that_completes_the_step(
    api: AsyncClient, jobs: tuple[str, DedupingJobs]
) -> None:
    url, service = jobs
    await api.add_service({"name": "jobs", "base_url": url, "timeout": 0.5}, replace=True)
    await api.apply(workflow("resend-named", {"retries": 1, "delay": "0s", "on": ["timeout"]}))
    run = await api.start("resend-named", {})
    done = await api.wait(run["id"], timeout=20)
    assert done["status"] == "succeeded", done
    # Each attempt is its own job under its own key: the deduplicating service made a second job,
    # which reported on the second attempt's token; the first job's report is refused.
    assert service.keys == [f"{run['id']}:job:1", f"{run['id']}:job:2"]
    assert done["output"] == {"job": 2}
    for _ in range(100):
        if len(service.reports) == 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(service.reports) == [200, 409]


class HangingUpJobs:
    """Accepts `POST /jobs` for a polled job; the first submission creates the job, then the
    connection breaks before any answer (a proxy reset, a crash after the commit)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def submit(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers["Idempotency-Key"])
        if len(self.keys) == 1 and request.transport is not None:
            request.transport.close()
            await asyncio.sleep(0.1)
        return web.json_response({"result": str(request.url.with_path("/done"))}, status=202)

    async def done(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": len(self.keys)})


@pytest.fixture
async def hanging() -> AsyncIterator[tuple[str, HangingUpJobs]]:
    service = HangingUpJobs()
    app = web.Application()
    app.router.add_post("/jobs", service.submit)
    app.router.add_get("/done", service.done)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}", service
    await runner.cleanup()


def polled(name: str, retry: Any) -> dict[str, Any]:
    http: dict[str, Any] = {"service": "hangs", "path": "/jobs", "method": "POST"}
    http["poll"] = {"every": "100ms", "url": "{{ accepted.body.result }}"}
    step = {"http": http, "timeout": "10s", "retry": retry}
    return {"name": name, "steps": {"job": step}, "output": "{{ steps.job.output }}"}


async def test_a_job_submission_cut_after_sending_is_not_sent_again_by_default(
    api: AsyncClient, hanging: tuple[str, HangingUpJobs]
) -> None:
    url, service = hanging
    await api.add_service({"name": "hangs", "base_url": url, "timeout": 5}, replace=True)
    await api.apply(polled("hangup-default", {"delay": "0s"}))
    run = await api.start("hangup-default", {})
    done = await api.wait(run["id"], timeout=20)
    assert done["status"] == "failed", done
    error = done["steps"][0]["error"]
    assert error["kind"] == "network" and error["sent"] is True
    assert service.keys == [f"{run['id']}:job:1"]  # the job may exist: not made twice


async def test_a_policy_naming_network_resubmits_a_job_cut_after_sending(
    api: AsyncClient, hanging: tuple[str, HangingUpJobs]
) -> None:
    url, service = hanging
    await api.add_service({"name": "hangs", "base_url": url, "timeout": 5}, replace=True)
    await api.apply(polled("hangup-named", {"retries": 1, "delay": "0s", "on": ["network"]}))
    run = await api.start("hangup-named", {})
    done = await api.wait(run["id"], timeout=20)
    assert done["status"] == "succeeded", done
    assert service.keys == [f"{run['id']}:job:1", f"{run['id']}:job:2"]
