"""The egress policy against real servers on loopback: steps, redirects, polls and webhooks are
refused (kind `egress`, never retried) where the policy says so, on the address actually connected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from legato import Engine, Service
from legato.cli import main
from legato.store.protocol import NotificationRow
from tests.integration.testservice import LoopbackService


class Redirector:
    """Answers /go?to=URL with a 302 to URL (to itself without `to`); counts what it answers."""

    def __init__(self) -> None:
        self.url = ""
        self.port = 0
        self.hits = 0
        self.runner: web.AppRunner | None = None

    async def go(self, request: web.Request) -> web.Response:
        self.hits += 1
        raise web.HTTPFound(request.query.get("to", "/go"))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/go", self.go)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def redirector() -> AsyncIterator[Redirector]:
    r = Redirector()
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


@pytest.fixture
async def other() -> AsyncIterator[LoopbackService]:
    """A second service, on another port: the one the policies forbid."""
    svc = LoopbackService()
    await svc.start()
    yield svc
    await svc.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def run_one(engine: Engine, name: str, step: dict[str, Any]) -> Any:
    await engine.apply({"name": name, "steps": {"a": step}, "output": "{{ steps.a.output }}"})
    return await engine.run(name, {}, timeout=10)


async def test_a_policy_of_one_port_refuses_another_without_retrying(
    tmp_path: Path, redirector: Redirector, other: LoopbackService
) -> None:
    policy = f"127.0.0.1:{redirector.port}"
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", egress=policy) as engine:
        step = {
            "http": {"url": f"{other.url}/echo"},
            "retry": {"retries": 3, "delay": "10ms", "on": ["network", "5xx"]},
        }
        run = await run_one(engine, "port", step)
        a = run.steps["a"]
        assert run.info.status == "failed"
        assert a.error["kind"] == "egress", a.error
        assert f"127.0.0.1 port {port_of(other.url)}" in a.error["message"]
        assert policy in a.error["message"]
        assert a.attempt == 1  # not transient: no retry
        assert other.requests == []
        # The allowed port answers (its 302 is the answer: redirects are not followed).
        run = await run_one(
            engine, "allowed", {"http": {"url": f"{redirector.url}/go?to=/x", "success": [302]}}
        )
        assert run.info.status == "succeeded", run.info.error
        assert run.info.output["status"] == 302


async def test_redirects_are_not_followed_unless_the_service_says_so(
    tmp_path: Path, redirector: Redirector, other: LoopbackService
) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}") as engine:
        await engine.put_service(Service(name="r", base_url=redirector.url, timeout=5))
        to = f"{other.url}/echo"
        step: dict[str, Any] = {"http": {"service": "r", "path": "/go", "query": {"to": to}}}
        run = await run_one(engine, "stays", step)
        assert run.info.status == "failed"
        assert run.steps["a"].error["kind"] == "status"
        assert "answered 302" in run.steps["a"].error["message"]
        assert other.requests == []
        # The service follows redirects: the hop is taken.
        follows = Service(name="r", base_url=redirector.url, timeout=5, follow_redirects=True)
        await engine.put_service(follows)
        run = await run_one(engine, "follows", step)
        assert run.info.status == "succeeded", run.info.error
        assert len(other.requests) == 1
        # A loop ends after a bounded number of hops.
        loop: dict[str, Any] = {"http": {"service": "r", "path": "/go"}}
        run = await run_one(engine, "loop", loop)
        assert run.steps["a"].error["kind"] == "status", run.steps["a"].error
        assert "more than 10 redirects" in run.steps["a"].error["message"]
        assert redirector.hits == 2 + 10  # the first call and 9 hops; the 10th is not taken
        # A step may say so itself, either way.
        step["http"]["follow_redirects"] = False
        run = await run_one(engine, "step-says-no", step)
        assert run.steps["a"].error["kind"] == "status"
        assert len(other.requests) == 1


async def test_a_redirect_to_a_forbidden_address_is_refused_at_the_hop(
    tmp_path: Path, redirector: Redirector, other: LoopbackService
) -> None:
    policy = f"127.0.0.1:{redirector.port}"
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", egress=policy) as engine:
        follows = Service(name="r", base_url=redirector.url, timeout=5, follow_redirects=True)
        await engine.put_service(follows)
        to = f"{other.url}/echo"
        step = {"http": {"service": "r", "path": "/go", "query": {"to": to}}}
        run = await run_one(engine, "hop", step)
        assert run.info.status == "failed"
        assert run.steps["a"].error["kind"] == "egress"
        assert f"port {port_of(other.url)}" in run.steps["a"].error["message"]
        assert redirector.hits == 1  # the first hop was made
        assert other.requests == []  # the second was refused
        # A redirect to the metadata address, with no policy at all, is refused too.
    async with Engine.open(f"sqlite:///{tmp_path / 'f.db'}") as engine:
        await engine.put_service(follows)
        step = {"http": {"service": "r", "path": "/go", "query": {"to": "http://169.254.169.254/"}}}
        run = await run_one(engine, "hop-metadata", step)
        assert run.steps["a"].error["kind"] == "egress", run.steps["a"].error
        assert "169.254.169.254" in run.steps["a"].error["message"]


async def test_the_address_a_name_resolves_to_is_what_is_checked(
    tmp_path: Path, service: LoopbackService
) -> None:
    port = port_of(service.url)
    # The name is allowed, but the address it resolves to is denied.
    denied = "localhost, !127.0.0.0/8, !::1"
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", egress=denied) as engine:
        run = await run_one(engine, "rebound", {"http": {"url": f"http://localhost:{port}/echo"}})
        error = run.steps["a"].error
        assert error["kind"] == "egress", error
        assert "localhost (" in error["message"] and "denied by rule" in error["message"]
        # 0.0.0.0 would reach the loopback service past the denial: refused too.
        run = await run_one(engine, "unspecified", {"http": {"url": f"http://0.0.0.0:{port}/echo"}})
        assert run.steps["a"].error["kind"] == "egress", run.steps["a"].error
    assert service.requests == []
    # An address rule allows a name that resolves to the address (and only that address is used).
    async with Engine.open(f"sqlite:///{tmp_path / 'f.db'}", egress=f"127.0.0.1:{port}") as engine:
        run = await run_one(engine, "resolved", {"http": {"url": f"http://localhost:{port}/echo"}})
        assert run.info.status == "succeeded", run.info.error
    assert len(service.requests) == 1


async def test_the_loopback_keyword_refuses_ipv6_and_mapped_loopback_too(tmp_path: Path) -> None:
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "::1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", egress="!loopback") as engine:
            for i, url in enumerate(
                [f"http://[::1]:{port}/", f"http://[::ffff:127.0.0.1]:{port}/"]
            ):
                run = await run_one(engine, f"lo{i}", {"http": {"url": url}})
                error = run.steps["a"].error
                assert error["kind"] == "egress" and "'!loopback'" in error["message"], error
        # Without the keyword, only the IPv4 rule: ::1 was reachable (the reviewed hole).
        async with Engine.open(f"sqlite:///{tmp_path / 'f.db'}", egress="!127.0.0.0/8") as engine:
            run = await run_one(engine, "v4only", {"http": {"url": f"http://[::1]:{port}/"}})
            assert run.info.status == "succeeded", run.info.error
    finally:
        await runner.cleanup()
    assert hits == ["/"]


async def test_metadata_and_link_local_addresses_are_refused_by_default(tmp_path: Path) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}") as engine:
        for i, url in enumerate(
            [
                "http://169.254.169.254/latest/meta-data/",
                "http://[fe80::1]:8080/",
                "http://169.254.1.2/",
                "http://100.100.100.200/latest/meta-data/",  # Alibaba
                "http://169.254.170.2/v2/credentials/",  # AWS ECS
            ]
        ):
            started = time.monotonic()
            run = await run_one(engine, f"md{i}", {"http": {"url": url}})
            assert run.steps["a"].error["kind"] == "egress", (url, run.steps["a"].error)
            assert "refused unless allowed explicitly" in run.steps["a"].error["message"]
            assert time.monotonic() - started < 2  # refused before any connection is tried


async def test_a_poll_url_is_checked_too(
    tmp_path: Path, service: LoopbackService, other: LoopbackService
) -> None:
    policy = f"127.0.0.1:{port_of(service.url)}"
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", egress=policy) as engine:
        await engine.put_service(Service(name="svc", base_url=service.url, timeout=5))
        step = {
            "timeout": "5s",
            "http": {
                "service": "svc",
                "path": "/echo",
                "json": {"result": f"{other.url}/echo"},
                "poll": {"every": "50ms", "url": "{{ accepted.body.echo.result }}"},
            },
        }
        run = await run_one(engine, "polled", step)
        error = run.steps["a"].error
        assert error["kind"] == "egress", error
        assert f"port {port_of(other.url)}" in error["message"]
    assert len(service.requests) == 1 and other.requests == []


async def recorded(engine: Engine, run_id: str) -> list[NotificationRow]:
    deadline = time.monotonic() + 10
    while not (rows := await engine.store.list_notifications(run_id)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return rows


async def test_a_refused_webhook_is_recorded_as_a_failure_once(
    tmp_path: Path, service: LoopbackService, other: LoopbackService
) -> None:
    policy = f"127.0.0.1:{port_of(service.url)}"
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}", egress=policy) as engine:
        engine.notifier.backoff = 0.05
        await engine.apply(
            {
                "name": "hooked",
                "webhooks": [{"url": f"{other.url}/echo", "on": ["success"]}],
                "steps": {"nap": {"wait": "10ms"}},
            }
        )
        run = await engine.run("hooked", timeout=10)
        assert run.info.status == "succeeded"
        [row] = await recorded(engine, run.info.id)
    assert (row.channel, row.ok, row.tries) == ("webhook", False, 1)
    assert row.error is not None and "egress refused" in row.error
    assert f"port {port_of(other.url)}" in row.error
    assert other.requests == []


async def test_a_webhook_redirect_is_not_followed(
    tmp_path: Path, redirector: Redirector, other: LoopbackService
) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}") as engine:
        engine.notifier.backoff, engine.notifier.tries = 0.01, 3
        hook = f"{redirector.url}/go?to={other.url}/echo"
        await engine.apply(
            {
                "name": "hooked",
                "webhooks": [{"url": hook, "on": ["success"]}],
                "steps": {"nap": {"wait": "10ms"}},
            }
        )
        run = await engine.run("hooked", timeout=10)
        [row] = await recorded(engine, run.info.id)
    assert not row.ok and row.error is not None and "302" in row.error
    assert other.requests == []


def test_retrying_egress_failures_is_refused_at_registration(tmp_path: Path) -> None:
    from legato.errors import DefinitionError
    from legato.model.build import build_workflow

    with pytest.raises(DefinitionError, match="never retried"):
        build_workflow(
            {
                "name": "x",
                "steps": {"a": {"http": {"url": "http://x/"}, "retry": {"on": ["egress"]}}},
            }
        )


def test_the_cli_names_a_bad_rule() -> None:
    for command in ("serve", "worker"):
        result = CliRunner().invoke(main, [command, "--egress", "10.0.0.0/8:99999"])
        assert result.exit_code == 2
        assert "egress rule '10.0.0.0/8:99999'" in result.output
        assert "1-65535" in result.output
        result = CliRunner().invoke(main, [command], env={"LEGATO_EGRESS": "a..b"})
        assert result.exit_code == 2 and "egress rule 'a..b'" in result.output


async def test_a_server_started_with_a_policy_refuses_at_the_hop(
    tmp_path: Path, redirector: Redirector, other: LoopbackService
) -> None:
    from legato.client import AsyncClient
    from tests.integration.serverprocess import start_server
    from tests.integration.test_cli import _run_async

    proc = start_server(tmp_path, "--egress", f"127.0.0.1:{redirector.port}")
    try:
        code, _, err = await _run_async(
            "service", "add", "r", redirector.url, "--follow-redirects", "--url", proc.url
        )
        assert code == 0, err
        async with AsyncClient(proc.url) as client:
            [entry] = [s for s in await client.services() if s["name"] == "r"]
            assert entry["follow_redirects"] is True
            step = {"http": {"service": "r", "path": "/go", "query": {"to": f"{other.url}/echo"}}}
            await client.apply({"name": "served", "steps": {"a": step}})
            run = await client.start("served", {}, wait=10)
            assert run["status"] == "failed"
            [a] = [s for s in run["steps"] if s["name"] == "a"]
            assert a["error"]["kind"] == "egress", a
    finally:
        proc.stop()
    assert redirector.hits == 1 and other.requests == []
