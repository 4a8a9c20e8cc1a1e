"""Notifications against real receivers on loopback: an aiosmtpd SMTP server gets the failure email,
an aiohttp receiver checks each webhook's signature and makes the first tries fail, and a notifier
that cannot reach anyone leaves the run's outcome alone and records its failure."""

from __future__ import annotations

import asyncio
import email
import socket
import time
from collections.abc import AsyncIterator
from email.message import Message
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from legato import Engine
from legato.engine.notifier import SIGNATURE_HEADER, TIMESTAMP_HEADER, Smtp, sign
from legato.store.protocol import NotificationRow

calls = {"flaky": 0}


def flaky() -> str:
    """Fails the first time it is called in a test, then succeeds."""
    calls["flaky"] += 1
    if calls["flaky"] == 1:
        raise RuntimeError("first try fails")
    return "ok"


class Mailbox:
    """An aiosmtpd handler that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(content)))
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield box, port
    server.close()
    await server.wait_closed()


class Receiver:
    """A webhook receiver that answers 500 to the first `fail` requests, then 200."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(self.requests) <= self.fail else 200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"


async def recorded(engine: Engine, run_id: str, count: int) -> list[NotificationRow]:
    deadline = time.monotonic() + 15
    while True:
        rows = await engine.store.list_notifications(run_id)
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_failed_run_emails_its_addresses(db_url: str, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    async with Engine.open(db_url) as engine:
        engine.notifier.smtp = Smtp.from_url(f"smtp://127.0.0.1:{port}?from=legato@test.local")
        await engine.apply(
            {
                "name": "mailed",
                "email": ["ops@example.com", "dev@example.com"],
                "steps": {"boom": {"fail": {"message": "the ledger does not balance"}}},
            }
        )
        run = await engine.run("mailed", timeout=10)
        assert run.info.status == "failed"
        [row] = await recorded(engine, run.info.id, 1)
        assert (row.event, row.channel, row.ok, row.tries) == ("failure", "email", True, 1)
    [(rcpt, message)] = box.messages
    assert rcpt == ["ops@example.com", "dev@example.com"]
    assert message["From"] == "legato@test.local"
    assert message["Legato-Delivery"] == row.delivery_id and row.delivery_id
    assert run.info.id in message["Subject"] and "failed" in message["Subject"]
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes) and b"the ledger does not balance" in body


async def test_webhooks_are_signed_and_retried(db_url: str) -> None:
    receiver = Receiver(fail=2)
    await receiver.start()
    calls["flaky"] = 0
    try:
        async with Engine.open(db_url) as engine:
            engine.notifier.backoff = 0.05
            await engine.apply(
                {
                    "name": "hooked",
                    "webhooks": [{"url": receiver.url, "on": ["retry", "success"]}],
                    "steps": {
                        "once": {
                            "python": {"function": "tests.integration.test_notifications:flaky"},
                            "retry": {"retries": 1, "delay": "50ms", "on": ["exception"]},
                        }
                    },
                }
            )
            run = await engine.run("hooked", timeout=10)
            assert run.info.status == "succeeded"
            rows = await recorded(engine, run.info.id, 2)
            secret = engine.notifier.secret
    finally:
        assert receiver.runner is not None
        await receiver.runner.cleanup()
    assert sorted((r.event, r.ok) for r in rows) == [("retry", True), ("success", True)]
    assert sum(r.tries for r in rows) == 4  # two refused tries, then one each
    events: list[dict[str, Any]] = []
    for headers, body in receiver.requests:
        assert headers[SIGNATURE_HEADER] == sign(secret, headers[TIMESTAMP_HEADER], body)
        assert headers[SIGNATURE_HEADER] != sign("another secret", headers[TIMESTAMP_HEADER], body)
        events.append(orjson.loads(body))
    retry = next(e for e in events if e["event"] == "retry")
    assert retry["step"] == "once" and retry["error"]["kind"] == "exception"
    assert {e["event"] for e in events} == {"retry", "success"}


async def test_a_failing_notifier_leaves_the_run_alone_and_is_recorded(db_url: str) -> None:
    async with Engine.open(db_url) as engine:
        engine.notifier.backoff = 0.05
        engine.notifier.tries = 3
        engine.notifier.smtp = None  # nowhere to send email
        hook = f"http://127.0.0.1:{closed_port()}/hook"  # nobody listens
        await engine.apply(
            {
                "name": "unheard",
                "email": ["ops@example.com"],
                "email_on_success": True,
                "webhooks": [{"url": hook, "on": ["success", "failure"]}],
                "steps": {"nap": {"wait": "10ms"}},
                "output": "done",
            }
        )
        started = time.monotonic()
        run = await engine.run("unheard", timeout=10)
        assert run.info.status == "succeeded" and run.info.output == "done"
        assert time.monotonic() - started < 2  # the run did not wait for its notifications
        rows = await recorded(engine, run.info.id, 2)
    assert sorted((r.channel, r.ok, r.tries) for r in rows) == [
        ("email", False, 3),
        ("webhook", False, 3),
    ]
    assert all(r.error for r in rows)
    assert "SMTP" in next(r.error or "" for r in rows if r.channel == "email")
