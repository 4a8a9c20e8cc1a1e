"""A real HTTP service on loopback that the integration tests call and then question.

It records every request (path, headers, JSON body), can fail a given number of times per key, answer
any status, be slow, and count how many calls are in flight at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientSession, web


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    query: dict[str, str]


@dataclass
class LoopbackService:
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    early_reports: list[int] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    runner: web.AppRunner | None = None

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    def keys(self, path: str | None = None) -> list[str]:
        return [
            r.headers.get("Idempotency-Key", "")
            for r in self.requests
            if path is None or r.path == path
        ]

    async def _record(self, request: web.Request) -> Seen:
        raw = await request.read()
        body = orjson.loads(raw) if raw and request.content_type == "application/json" else None
        seen = Seen(request.method, request.path, dict(request.headers), body, dict(request.query))
        self.requests.append(seen)
        return seen

    async def echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        return _json({"echo": seen.json, "query": seen.query})

    async def flaky(self, request: web.Request) -> web.Response:
        """Fails `fail` times (with `status`) per Idempotency-Key, then succeeds."""
        seen = await self._record(request)
        key = seen.headers.get("Idempotency-Key", "") + request.path
        fail = int(request.query.get("fail", "1"))
        status = int(request.query.get("status", "503"))
        if self.failures[key] < fail:
            self.failures[key] += 1
            return _json({"error": "try again"}, status)
        return _json({"ok": True, "after": self.failures[key]})

    async def status(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _json({"status": int(request.match_info["code"])}, int(request.match_info["code"]))

    async def slow(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("delay", "0.05")))
        finally:
            self.in_flight -= 1
        return _json({"slept": True, "echo": seen.json})

    async def deep(self, request: web.Request) -> web.Response:
        """JSON nested `levels` deep: more than a store can write back as it came."""
        await self._record(request)
        levels = int(request.query.get("levels", "300"))
        return web.Response(body=b"[" * levels + b"]" * levels, content_type="application/json")

    async def callback_first(self, request: web.Request) -> web.Response:
        """A fast async service: it reports through its callback before answering the call."""
        seen = await self._record(request)
        async with ClientSession() as http:
            report = {"output": {"early": True, "echo": seen.json}}
            async with http.post(request.headers["Legato-Callback-Url"], json=report) as answer:
                self.early_reports.append(answer.status)
        return _json({"accepted": True}, 202)

    async def mirror(self, request: web.Request) -> web.Response:
        """Echoes the whole request as it arrived (URL, raw path, headers, body) with the status
        `?status=` asks for: a service that reflects what it got, credentials included."""
        await self._record(request)
        reply = {
            "method": request.method,
            "url": str(request.url),
            "raw_path": request.raw_path,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": await request.text(),
        }
        return _json(reply, int(request.query.get("status", "200")))

    async def text(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="plain words")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_route("*", "/echo/{tail:.*}", self.echo)
        app.router.add_route("*", "/flaky", self.flaky)
        app.router.add_route("*", "/flaky/{tail:.*}", self.flaky)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/text", self.text)
        app.router.add_route("*", "/mirror", self.mirror)
        app.router.add_route("*", "/mirror/{tail:.*}", self.mirror)
        app.router.add_route("*", "/deep", self.deep)
        app.router.add_route("*", "/callback-first", self.callback_first)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
