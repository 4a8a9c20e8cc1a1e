"""SIGKILL a `legato serve` process between a run's failure and the delivery of its notification:
the next process on the same database delivers it, with the delivery id and a valid signature."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from legato.client import AsyncClient
from legato.engine.notifier import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.integration.serverprocess import ServerProcess, free_port, start_server
from tests.integration.test_outbox import Hooks, failing


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    await h.start()
    yield h
    await h.stop()


async def until(check: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not (check() if callable(check) else check):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def webhook_secret(db: str) -> str:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        [(secret,)] = conn.execute("SELECT value FROM legato_meta WHERE key = 'secret:webhooks'")
    return str(secret)


def kill(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)


async def failed_run(server: ServerProcess, spec: dict[str, object]) -> str:
    async with AsyncClient(server.url) as api:
        await api.apply(spec)
        run_id = str((await api.start(str(spec["name"])))["id"])
        assert (await api.wait(run_id, timeout=10))["status"] == "failed"
    return run_id


async def test_a_send_cut_short_by_sigkill_is_delivered_after_a_restart(
    tmp_path: Path, hooks: Hooks
) -> None:
    first = await asyncio.to_thread(start_server, tmp_path, name="first")
    try:
        run_id = await failed_run(first, failing("hung-then-killed", f"{hooks.base}/hang"))
        await until(lambda: hooks.counts.get("/hang") == 1, "the send did not begin")
    finally:
        kill(first)  # while the receiver holds the request: the send never finished
    hooks.release.set()  # the receiver answers from now on
    again = await asyncio.to_thread(start_server, tmp_path, db=first.db, name="again")
    try:
        await until(lambda: hooks.counts.get("/hang", 0) >= 2, "not sent again after restart")
        async with AsyncClient(again.url) as api:
            deadline = time.monotonic() + 10
            while not (rows := await api.notifications(run_id)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        again.stop()
    [row] = rows
    assert (row["event"], row["ok"], row["tries"]) == ("failure", True, 2)
    sent = [(h, b) for p, h, b, _ in hooks.seen if p == "/hang"]
    assert len(sent) == 2  # cut short once, then delivered once
    assert {h[DELIVERY_HEADER] for h, _ in sent} == {row["delivery_id"]}
    secret = webhook_secret(first.db)
    for headers, body in sent:
        assert headers[SIGNATURE_HEADER] == sign(secret, headers[TIMESTAMP_HEADER], body)


async def test_a_retry_pending_at_sigkill_is_delivered_after_a_restart(tmp_path: Path) -> None:
    """The receiver is down (connections refused) when the run fails; the server is killed while
    the notification waits for its next try; the receiver comes up; the next process delivers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/late"
    first = await asyncio.to_thread(start_server, tmp_path, name="first")
    db = first.db.removeprefix("sqlite:///")

    def tried() -> bool:
        with sqlite3.connect(db) as conn:
            found = conn.execute("SELECT attempts, error FROM outbox").fetchall()
        return bool(found) and found[0][1] is not None

    try:
        run_id = await failed_run(first, failing("refused-then-killed", url))
        await until(tried, "no refused try recorded")
    finally:
        kill(first)
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/{tail:.*}", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        again = await asyncio.to_thread(start_server, tmp_path, db=first.db, name="again")
        try:
            await until(lambda: hooks.counts.get("/late", 0) >= 1, "not delivered after restart")
            async with AsyncClient(again.url) as api:
                deadline = time.monotonic() + 10
                while not (rows := await api.notifications(run_id)):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        finally:
            again.stop()
    finally:
        await runner.cleanup()
    [row] = rows
    assert row["ok"] and row["tries"] >= 2
    [(headers, body)] = [(h, b) for p, h, b, _ in hooks.seen if p == "/late"]
    assert headers[DELIVERY_HEADER] == row["delivery_id"]
    secret = webhook_secret(first.db)
    assert headers[SIGNATURE_HEADER] == sign(secret, headers[TIMESTAMP_HEADER], body)
