"""What Legato's HTTP clients refuse to carry, against real servers on loopback: no cookie is kept
between calls (steps, directory lookups, webhooks), one deadline covers every redirect hop, a hop
does not re-send a body to another origin nor take credentials from `Location`, and a path or URL
with a dot segment (however disguised) is never sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from legato import Engine, Service
from legato.engine.directory import ExternalDirectory
from legato.engine.egress import EgressPolicy
from legato.engine.http_executor import HttpExecutor
from legato.errors import DefinitionError
from legato.expressions import compile_template
from legato.model.workflow import HttpCall


class Site:
    """One origin (`localhost:<port>`, a name so that cookies would be kept for it) recording
    every request: method, path, headers and body."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.to = ""  # where /away redirects
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        path = request.path
        if path == "/setcookie":
            resp = web.json_response({"ok": True})
            resp.set_cookie("sess", "SESSION-OF-ANOTHER-RUN")
            return resp
        if path.startswith("/url/"):  # a directory lookup, that also sets a cookie
            resp = web.json_response({"url": self.url})
            resp.set_cookie("dir", "DIRECTORY-COOKIE")
            return resp
        if path == "/slow":
            await asyncio.sleep(0.4)
            return web.Response(status=302, headers={"Location": "/slow"})
        if path in ("/away307", "/away302"):
            return web.Response(status=int(path[-3:]), headers={"Location": self.to})
        if path == "/here307":
            return web.Response(status=307, headers={"Location": "/sink"})
        return web.json_response({"path": path})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://localhost:{self.runner.addresses[0][1]}"

    def cookies(self) -> list[str]:
        return [h["Cookie"] for _, _, h, _ in self.seen if "Cookie" in h]


@pytest.fixture
async def sites() -> AsyncIterator[tuple[Site, Site]]:
    a, b = Site(), Site()
    await a.start()
    await b.start()
    yield a, b
    for s in (a, b):
        assert s.runner is not None
        await s.runner.cleanup()


def executor(site: Site, token: str = "SERVICE-TOKEN-123") -> HttpExecutor:
    svc = Service(name="svc", base_url=site.url, token=token, follow_redirects=True)
    return HttpExecutor({"svc": svc}.get, EgressPolicy.parse(None))


async def call(
    ex: HttpExecutor, path: str, method: str = "GET", timeout: float | None = None, **kw: Any
) -> Any:
    action = HttpCall(
        service="svc", url=None, method=method, path=compile_template(""), follow_redirects=True
    )
    request = {"service": "svc", "method": method, "path": path, **kw}
    return await ex.execute("run1", "s", action, request, timeout)


async def test_no_cookie_is_kept_between_calls_or_origins(sites: tuple[Site, Site]) -> None:
    a, b = sites
    ex = executor(a)
    try:
        assert (await call(ex, "/setcookie")).ok
        assert (await call(ex, "/echo")).ok
        by_url = HttpCall(
            service=None,
            url=compile_template(f"{b.url}/echo"),
            method="GET",
            path=compile_template(""),
        )
        out = await ex.execute("run2", "s", by_url, {"url": f"{b.url}/echo", "method": "GET"}, 5)
        assert out.ok, out.error
        a.to = f"{b.url}/sink"
        assert (await call(ex, "/away302")).ok
    finally:
        await ex.close()
    assert len(a.seen) == 3 and len(b.seen) == 2
    assert a.cookies() == [] and b.cookies() == []


async def test_directory_lookups_keep_no_cookie(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    directory = ExternalDirectory(a.url)
    try:
        await directory.service("one")
        await directory.service("two")
    finally:
        await directory.close()
    assert [p for _, p, _, _ in a.seen] == ["/url/one", "/url/two"]
    assert a.cookies() == []


async def test_webhooks_keep_no_cookie(tmp_path: Path, sites: tuple[Site, Site]) -> None:
    a, _ = sites
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}") as engine:
        hook = {"url": f"{a.url}/setcookie", "on": ["success"]}
        await engine.apply(
            {"name": "hooked", "webhooks": [hook], "steps": {"nap": {"wait": "1ms"}}}
        )
        for n in (1, 2):  # one after the other: the second is sent once the first's answer is in
            await engine.run("hooked", timeout=10)
            deadline = time.monotonic() + 10
            while len(a.seen) < n:
                assert time.monotonic() < deadline, a.seen
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
    assert a.cookies() == []


async def test_one_deadline_covers_every_redirect_hop(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    ex = executor(a)
    started = time.monotonic()
    try:
        out = await call(ex, "/slow", timeout=1.0)
    finally:
        await ex.close()
    took = time.monotonic() - started
    assert out.error["kind"] == "timeout", out.error
    assert "within 1s" in out.error["message"]
    assert took < 1.6, took  # 0.4 s a hop: 3 hops at most, not 10
    assert len(a.seen) <= 3


async def test_a_body_is_not_resent_to_another_origin(sites: tuple[Site, Site]) -> None:
    a, b = sites
    b.to = f"{a.url}/sink"
    a.to = f"{b.url}/sink"
    ex = executor(a)
    try:
        out = await call(ex, "/away307", "POST", json={"password": "hunter2"})
        assert out.error["kind"] == "status", out.error
        assert "re-send the request body" in out.error["message"]
        assert f"{b.url}/sink" in out.error["message"]
        assert b.seen == []
        # The same origin still gets the body (and the service's token) on a 307.
        out = await call(ex, "/here307", "POST", json={"n": 1})
        assert out.ok, out.error
        method, path, headers, body = a.seen[-1]
        assert (method, path, body) == ("POST", "/sink", b'{"n":1}')
        assert headers["Authorization"] == "Bearer SERVICE-TOKEN-123"
        # A body-less hop to another origin is taken, without the token.
        out = await call(ex, "/away307")
        assert out.ok, out.error
        assert [(m, p) for m, p, _, _ in b.seen] == [("GET", "/sink")]
        assert "Authorization" not in b.seen[0][2]
        # A POST answered 302 goes on as a GET without body: allowed to another origin.
        out = await call(ex, "/away302", "POST", json={"password": "hunter2"})
        assert out.ok, out.error
        assert b.seen[-1][0] == "GET" and b.seen[-1][3] == b""
    finally:
        await ex.close()


async def test_credentials_in_location_are_not_used(sites: tuple[Site, Site]) -> None:
    a, b = sites
    ex = executor(a)
    try:
        a.to = b.url.replace("//", "//user:pass@") + "/sink"
        out = await call(ex, "/away302")
        assert out.ok, out.error
        assert b.seen[-1][1] == "/sink"
        assert "Authorization" not in b.seen[-1][2]
        # On the same origin the service's own token stays (it used to clash: a config error).
        a.to = a.url.replace("//", "//user:pass@") + "/sink"
        out = await call(ex, "/away302")
        assert out.ok, out.error
        assert a.seen[-1][1] == "/sink"
        assert a.seen[-1][2]["Authorization"] == "Bearer SERVICE-TOKEN-123"
    finally:
        await ex.close()


DISGUISED = ("..;/admin", "a/..;/admin", "/%2e%2e%3b/admin", "..%00/admin", "%c0%ae%c0%ae/admin")


async def test_disguised_dot_segments_are_never_sent(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    ex = executor(a)
    try:
        for path in (*DISGUISED, "\uff0e\uff0e/admin"):
            out = await call(ex, path)
            assert out.error["kind"] == "config", (path, out.error)
            assert out.error["message"].startswith("http.path"), out.error
        # A plain path, with matrix parameters, is sent.
        assert (await call(ex, "/api/v1;ver=2/users")).ok
    finally:
        await ex.close()
    assert [p for _, p, _, _ in a.seen] == ["/api/v1;ver=2/users"]


async def test_a_rendered_url_with_a_dot_segment_is_not_sent(
    tmp_path: Path, sites: tuple[Site, Site]
) -> None:
    a, _ = sites
    async with Engine.open(f"sqlite:///{tmp_path / 'e.db'}") as engine:
        step = {
            "http": {
                "url": a.url + "/x/users/{{ input.id }}",
                "headers": {"Authorization": "Bearer STEP-TOKEN"},
            },
            "retry": 0,
        }
        await engine.apply({"name": "u", "steps": {"a": step}})
        for bad in ("../admin", "..;", "%2e%2e/admin"):
            run = await engine.run("u", {"id": bad}, timeout=10)
            error = run.steps["a"].error
            assert run.info.status == "failed" and error is not None
            assert error["kind"] == "config", error
            assert "http.url" in error["message"] and "'..' segment" in error["message"]
        run = await engine.run("u", {"id": "7"}, timeout=10)
        assert run.info.status == "succeeded", run.info.error
    assert [p for _, p, _, _ in a.seen] == ["/x/users/7"]
    # Written out in full, it is refused when the workflow is registered, naming `url`.
    async with Engine.open(f"sqlite:///{tmp_path / 'f.db'}") as engine:
        with pytest.raises(DefinitionError, match=r"steps\.a\.http\.url"):
            await engine.apply({"name": "v", "steps": {"a": {"http": {"url": a.url + "/x/../y"}}}})


async def test_a_steps_own_idempotency_key_is_sent_as_written(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    ex = executor(a)
    action = HttpCall(service="svc", url=None, method="POST", path=compile_template(""))
    try:
        own = {"idempotency-key": "charge-42"}
        request = {"service": "svc", "method": "POST", "path": "/pay", "headers": own}
        assert (await ex.execute("run1", "s", action, request, 5)).ok
        # A job's per-attempt key (extra headers from the runtime) does not replace it either.
        job = {"Idempotency-Key": "run1:s:2", "Legato-Step": "s"}
        assert (await ex.execute("run1", "s", action, request, 5, job)).ok
        assert (await call(ex, "/plain", "POST", json={})).ok
    finally:
        await ex.close()
    keys = [[v for k, v in h.items() if k.lower() == "idempotency-key"] for _, _, h, _ in a.seen]
    assert keys == [["charge-42"], ["charge-42"], ["run1:s"]]


async def test_a_failure_to_connect_says_nothing_was_sent(sites: tuple[Site, Site]) -> None:
    a, _ = sites
    ex = executor(a)
    assert a.runner is not None
    await a.runner.cleanup()  # the port now refuses connections
    try:
        out = await call(ex, "/x", "POST", json={})
    finally:
        await ex.close()
    assert out.error["kind"] == "network", out.error
    assert "sent" not in out.error
