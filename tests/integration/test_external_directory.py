"""`--directory-url`: a CoWorks-style directory service (`GET /url/{name}` -> `{url, token}`) as a
second source of services, against a real local directory and a real local service behind it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from legato import Engine, Service
from legato.client import AsyncClient
from legato.engine.directory import DirectoryError, ExternalDirectory
from legato.engine.state import StepState
from tests.integration.serverprocess import free_port, start_server

TOKEN = "cws-token-0123456789"


@dataclass
class Directory:
    """A CoWorks directory (names to URLs and tokens) and a microservice that checks its token."""

    entries: dict[str, Any] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    calls: list[str | None] = field(default_factory=list)
    url: str = ""
    service_url: str = ""

    async def lookup(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.asked.append(name)
        entry = self.entries.get(name)
        if entry is None:
            return web.json_response({"message": "unknown"}, status=404)
        if isinstance(entry, int):
            return web.Response(status=entry)
        if isinstance(entry, str):
            return web.Response(text=entry)
        return web.json_response(entry)

    async def invoice(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.calls.append(auth)
        if auth != TOKEN:
            return web.json_response({"message": "Unauthorized"}, status=401)
        data = await request.json()
        return web.json_response({"invoice": f"INV-{data['order']}"})


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def directory() -> AsyncIterator[Directory]:
    d = Directory()
    app = web.Application()
    app.router.add_get("/url/{name}", d.lookup)
    app.router.add_post("/invoice", d.invoice)
    async with running(app) as url:
        d.url = d.service_url = url
        d.entries["billing"] = {"url": url, "token": TOKEN}
        yield d


INVOICE = {
    "name": "invoice",
    "inputs": {"order": "string"},
    "steps": {
        "create": {
            "http": {
                "service": "billing",
                "method": "POST",
                "path": "/invoice",
                "json": {"order": "{{ input.order }}"},
            },
            "retry": {"retries": 1, "delay": 0.05},
        }
    },
    "output": "{{ steps.create.output.body.invoice }}",
}


def failure(step: StepState) -> dict[str, Any]:
    assert step.error is not None
    return step.error


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_calls_a_service_only_the_directory_knows_with_its_token(
    tmp_path: Path, directory: Directory
) -> None:
    server = await asyncio.to_thread(start_server, tmp_path, "--directory-url", directory.url + "/")
    try:
        async with AsyncClient(server.url) as api:
            await api.apply(INVOICE)  # billing is in no Legato directory: accepted all the same
            for order in ("A-1", "A-2"):
                run = await api.start("invoice", {"order": order}, wait=20)
                assert run["status"] == "succeeded", run
                assert run["output"] == f"INV-{order}"
            shown = await api.run(run["id"])
            assert TOKEN not in str(shown)  # the token is never stored or shown
    finally:
        await asyncio.to_thread(server.stop)
    assert directory.calls == [TOKEN, TOKEN]  # sent as the whole Authorization header
    assert directory.asked == ["billing"]  # the second run used the cached entry


async def test_legato_own_directory_wins_and_unknown_names_fail_as_config(
    db_url: str, directory: Directory
) -> None:
    async with Engine.open(db_url) as engine:
        engine.use_directory(directory.url)
        await engine.apply(INVOICE)
        run = await engine.run("invoice", {"order": "B-1"}, timeout=20)
        assert run.info.status == "succeeded"

        # A Legato entry of the same name is used instead (and the directory is not asked).
        await engine.put_service(
            Service(name="billing", base_url=directory.service_url, token="other")
        )
        asked = len(directory.asked)
        run = await engine.run("invoice", {"order": "B-2"}, timeout=20)
        assert run.info.status == "failed"  # its token is not the one the service wants
        assert failure(run.steps["create"])["status"] == 401
        assert directory.calls[-1] == "Bearer other" and len(directory.asked) == asked

        await engine.apply(
            {"name": "unknown", "steps": {"s": {"http": {"service": "nobody", "path": "/"}}}}
        )
        run = await engine.run("unknown", {}, timeout=20)
        error = failure(run.steps["s"])
        assert error["kind"] == "config"
        assert "service 'nobody' is in neither directory" in error["message"]


@pytest.mark.parametrize(
    ("entry", "kind", "message"),
    [
        ("not json", "config", "the answer is not JSON"),
        ({"token": TOKEN}, "config", '"url" is missing'),
        ({"url": "ftp://x"}, "config", '"url" must be an absolute http'),
        ({"url": "http://x/", "token": 5}, "config", '"token" is not a string'),
        ({"url": "http://x/", "token": "{{ secrets.API }}"}, "config", "may not name a secret"),
        (503, "network", "answered 503"),
    ],
)
async def test_a_junk_answer_fails_the_step_with_what_is_wrong(
    tmp_path: Path, directory: Directory, entry: Any, kind: str, message: str
) -> None:
    directory.entries["billing"] = entry
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        engine.use_directory(directory.url)
        await engine.apply(INVOICE)
        run = await engine.run("invoice", {"order": "C"}, timeout=20)
        step = run.steps["create"]
        assert run.info.status == "failed"
        assert failure(step)["kind"] == kind
        assert message in failure(step)["message"]
        assert step.attempt == (2 if kind == "network" else 1)  # transient ones are retried
        assert directory.calls == []


async def test_a_directory_that_is_down_fails_the_step_as_network_after_its_retries(
    tmp_path: Path,
) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}") as engine:
        engine.use_directory(down)
        await engine.apply(INVOICE)
        run = await engine.run("invoice", {"order": "D"}, timeout=20)
        step = run.steps["create"]
        assert run.info.status == "failed"
        assert (failure(step)["kind"], step.attempt) == ("network", 2)
        assert f"the service directory {down} cannot be reached" in failure(step)["message"]
        assert "'billing'" in failure(step)["message"]


async def test_the_urls_the_directory_gives_pass_the_egress_policy(
    tmp_path: Path, directory: Directory
) -> None:
    async with Engine.open(f"sqlite:///{tmp_path / 'x.db'}", egress="!loopback") as engine:
        engine.use_directory(directory.url)  # the operator's own setting: not checked
        await engine.apply(INVOICE)
        run = await engine.run("invoice", {"order": "E"}, timeout=20)
        assert failure(run.steps["create"])["kind"] == "egress"
        assert directory.asked == ["billing"] and directory.calls == []


async def test_the_cache_keeps_answers_for_a_while_and_only_so_many(directory: Directory) -> None:
    now = [0.0]
    for name in ("a", "b", "c"):
        directory.entries[name] = {"url": f"http://{name}.example/"}
    cache = ExternalDirectory(directory.url, ttl=60, size=2, clock=lambda: now[0])
    try:
        found = await asyncio.gather(*(cache.service("a") for _ in range(5)))
        assert {s.base_url for s in found} == {"http://a.example/"}
        assert directory.asked == ["a"]  # concurrent lookups share one request
        await cache.service("b")
        await cache.service("c")  # the oldest (a) goes
        assert cache.cached("a") is None and cache.cached("c") is not None
        now[0] = 59.0
        await cache.service("c")
        assert directory.asked == ["a", "b", "c"]
        now[0] = 61.0
        await cache.service("c")
        assert directory.asked == ["a", "b", "c", "c"]
    finally:
        await cache.close()


def test_a_bad_directory_url_stops_the_server_with_its_name(tmp_path: Path) -> None:
    import subprocess

    from tests.integration.test_cli import LEGATO

    done = subprocess.run(
        [*LEGATO, "serve", "--directory-url", "nowhere", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--directory-url must be an absolute http:// or https:// URL" in done.stderr
    assert "Traceback" not in done.stderr


async def _chunked(request: web.Request) -> web.StreamResponse:
    """A valid answer in two chunks, some time apart (a proxy or a slow directory)."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b'{"url": "http://chunked.example/",')
    await asyncio.sleep(0.3)
    await resp.write(b' "token": "tok-chunked"}')
    await resp.write_eof()
    return resp


async def _huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(b'{"url": "http://huge.example/", "pad": "')
    for _ in range(40):  # 2.5 MB, far over the cap: only the cap is read
        await resp.write(b"x" * 65536)
    await resp.write(b'"}')
    await resp.write_eof()
    return resp


async def test_an_answer_in_chunks_is_read_whole_and_a_huge_one_is_too_large() -> None:
    seen: list[str] = []

    async def by_query(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.path}?{request.query_string}")
        return await {"chunked": _chunked, "huge": _huge}[request.match_info["name"]](request)

    app = web.Application()
    app.router.add_get("/dir/url/{name}", by_query)
    async with running(app) as url:
        cache = ExternalDirectory(f"{url}/dir/?api_key=s3cret#frag")
        try:
            found = await cache.service("chunked")
            assert found.base_url == "http://chunked.example/"
            assert found.headers == {"Authorization": "tok-chunked"}
            with pytest.raises(DirectoryError) as info:
                await cache.service("huge")
            assert info.value.kind == "config"
            assert f"the answer is over {64 * 1024} bytes" in str(info.value)
            assert "s3cret" not in str(info.value) and "/dir?***" in str(info.value)
        finally:
            await cache.close()
    # The lookup path goes before the query, which is kept; the fragment is never sent.
    assert seen == ["/dir/url/chunked?api_key=s3cret", "/dir/url/huge?api_key=s3cret"]
