"""Polled results against real servers: a service's result URL (404 until ready), and an object in
an S3-compatible store (moto's server, started by the test) at the key Legato sent with the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from legato import Engine, Service
from legato.engine.results import S3Results
from tests.integration.testservice import LoopbackService


async def test_a_result_url_is_polled_until_it_answers(
    engine: Engine, service: LoopbackService
) -> None:
    result_url = f"{service.url}/flaky/result?fail=2&status=404"
    await engine.apply(
        {
            "name": "render-url",
            "steps": {
                "job": {
                    "timeout": "10s",
                    "http": {
                        "service": "svc",
                        "path": "/echo",
                        "json": {"result": result_url},
                        "poll": {"every": "100ms", "url": "{{ accepted.body.echo.result }}"},
                    },
                }
            },
            "output": "{{ steps.job.output }}",
        }
    )
    run = await engine.run("render-url", {}, timeout=10)
    assert run.info.status == "succeeded", run.steps["job"]
    assert run.info.output == {"ok": True, "after": 2}
    assert len(service.seen("/flaky/result")) == 3  # two 404s, then the result


async def test_a_poll_url_that_is_not_a_url_fails_the_step(engine: Engine) -> None:
    await engine.apply(
        {
            "name": "render-bad-url",
            "steps": {
                "job": {
                    "timeout": "5s",
                    "http": {
                        "service": "svc",
                        "path": "/echo",
                        "json": {"result": "http://a..b/r"},
                        "poll": {"every": "50ms", "url": "{{ accepted.body.echo.result }}"},
                    },
                }
            },
        }
    )
    run = await engine.run("render-bad-url", {}, timeout=10)
    error = run.steps["job"].error
    assert run.info.status == "failed" and error is not None
    assert error["kind"] == "config" and "invalid URL" in error["message"]


@pytest.fixture
async def renderer(s3: str) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A serverless-style service: it accepts at once and later writes its result to the bucket and
    key the request named."""
    from aiobotocore.session import get_session

    seen: list[dict[str, str]] = []
    session = get_session()
    async with session.create_client("s3", endpoint_url=s3, region_name="us-east-1") as client:
        await client.create_bucket(Bucket="results")

        async def write_later(bucket: str, key: str, body: Any) -> None:
            await asyncio.sleep(0.3)
            await client.put_object(Bucket=bucket, Key=key, Body=orjson.dumps({"rendered": body}))

        async def accept(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            body = await request.json()
            bucket, key = (
                request.headers["Legato-Result-Bucket"],
                request.headers["Legato-Result-Key"],
            )
            asyncio.get_running_loop().create_task(write_later(bucket, key, body))
            return web.json_response({"accepted": True}, status=202)

        app = web.Application()
        app.router.add_post("/render", accept)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", seen
        await runner.cleanup()


async def test_an_s3_result_is_read_once_the_service_writes_it(
    tmp_path: Path, s3: str, renderer: tuple[str, list[dict[str, str]]]
) -> None:
    url, seen = renderer
    engine = Engine.open(f"sqlite:///{tmp_path / 's3.db'}")
    engine.results = S3Results(s3)
    async with engine:
        await engine.put_service(Service(name="renderer", base_url=url))
        await engine.apply(
            {
                "name": "render-s3",
                "steps": {
                    "job": {
                        "timeout": "10s",
                        "http": {
                            "service": "renderer",
                            "path": "/render",
                            "json": {"page": 1},
                            "poll": {"every": "100ms", "s3": {"bucket": "results"}},
                        },
                    }
                },
                "output": "{{ steps.job.output }}",
            }
        )
        run = await engine.run("render-s3", {}, timeout=10)
    assert run.info.status == "succeeded", run.steps["job"]
    assert run.info.output == {"rendered": {"page": 1}}
    assert seen[0]["Legato-Result-Bucket"] == "results"
    assert seen[0]["Legato-Result-Key"] == f"{run.info.id}/job/1.json"
