"""Listen steps and POST /api/events on a real server: correlation by key, events kept for a listener
that starts later (once, until they expire), and listeners that outlive a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server

ORDER = {
    "name": "await-payment",
    "inputs": [{"name": "order_id", "type": "string"}],
    "steps": {
        "paid": {"listen": {"event": "payment.received", "key": "{{ input.order_id }}"}},
        "done": {"depends_on": "paid", "wait": "0s"},
    },
    "output": "{{ steps.paid.output }}",
}


async def publish(server: ServerProcess, **event: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(f"{server.url}/api/events", json=event)


async def status_of(api: AsyncClient, run_id: str, step: str) -> str:
    run = await api.run(run_id)
    return str(next(s["status"] for s in run["steps"] if s["name"] == step))


async def until_waiting(api: AsyncClient, run_id: str) -> None:
    for _ in range(200):
        if await status_of(api, run_id, "paid") == "waiting":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the listen step never waited")


async def test_an_event_goes_to_the_run_waiting_for_its_key(
    api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(ORDER)
    a = await api.start("await-payment", {"order_id": "A-1"})
    b = await api.start("await-payment", {"order_id": "B-2"})
    await until_waiting(api, a["id"])
    await until_waiting(api, b["id"])
    answer = await publish(server, type="payment.received", key="A-1", data={"amount": 10})
    assert answer.status_code == 202
    body = answer.json()
    assert body["delivered_to"] == [a["id"]] and body["kept_until"] is None
    done = await api.wait(a["id"], timeout=10)
    assert (done["status"], done["output"]) == ("succeeded", {"amount": 10})
    assert await status_of(api, b["id"], "paid") == "waiting"  # another key: still waiting
    other = await publish(server, type="payment.refused", key="B-2")
    assert other.json()["delivered_to"] == []  # another type
    await api.cancel(b["id"])


async def test_an_early_event_is_kept_for_the_first_listener_only(
    api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(ORDER)
    early = await publish(server, type="payment.received", key="C-3", data={"amount": 5})
    assert early.json()["delivered_to"] == [] and early.json()["kept_until"] is not None
    first = await api.start("await-payment", {"order_id": "C-3"})
    done = await api.wait(first["id"], timeout=10)
    assert (done["status"], done["output"]) == ("succeeded", {"amount": 5})
    second = await api.start("await-payment", {"order_id": "C-3"})
    await until_waiting(api, second["id"])  # the kept event was consumed by the first
    await asyncio.sleep(0.2)
    assert await status_of(api, second["id"], "paid") == "waiting"
    await api.cancel(second["id"])


async def test_kept_events_expire(api: AsyncClient, server: ServerProcess) -> None:
    await api.apply(ORDER)
    gone = await publish(server, type="payment.received", key="D-4", keep_for="200ms")
    assert gone.status_code == 202
    none = await publish(server, type="payment.received", key="D-5", keep_for=0)
    assert none.json()["kept_until"] is None
    await asyncio.sleep(0.4)
    ids = [(await api.start("await-payment", {"order_id": k}))["id"] for k in ("D-4", "D-5")]
    for run_id in ids:
        await until_waiting(api, run_id)
    await asyncio.sleep(0.2)
    for run_id in ids:
        assert await status_of(api, run_id, "paid") == "waiting"
        await api.cancel(run_id)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({}, "type"),
        ({"type": ""}, "type"),
        ({"type": "x", "key": [1]}, "key"),
        ({"type": "x", "keep_for": "soon"}, "keep_for"),
        ({"type": "x", "extra": 1}, "extra"),
    ],
)
async def test_a_malformed_event_is_refused(
    server: ServerProcess, event: dict[str, Any], field: str
) -> None:
    answer = await publish(server, **event)
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["path"] == field


async def test_a_listener_outlives_a_restart(tmp_path: Path) -> None:
    first = start_server(tmp_path, name="first")
    async with AsyncClient(first.url) as api:
        await api.apply(ORDER)
        run = await api.start("await-payment", {"order_id": "E-5"})
        await until_waiting(api, run["id"])
    first.stop()
    early = start_server(tmp_path, db=first.db, name="again")
    try:
        answer = await publish(early, type="payment.received", key="E-5", data={"late": True})
        assert answer.json()["delivered_to"] == [run["id"]]
        async with AsyncClient(early.url) as api:
            done = await api.wait(run["id"], timeout=10)
        assert (done["status"], done["output"]) == ("succeeded", {"late": True})
    finally:
        early.stop()
