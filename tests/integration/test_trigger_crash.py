"""A `legato serve` killed after a trigger's run is committed and before the broker heard of it
(the message neither acked nor its offset committed) starts that message's run once: the next
process gets the message again and finds its receipt. On Kafka (tansu, started by the tests) and
RabbitMQ, on SQLite and PostgreSQL.

The process exits with `os._exit(9)` right after the commit (LEGATO_TEST_EXIT_AFTER_TRIGGER_COMMIT,
read only there): no handler returns, no ack or commit is sent, no clean-up runs, as with kill -9.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from legato.engine.triggers import CRASH_ENV
from legato.transports import open_transport
from tests.integration.brokers import broker_url, remove
from tests.integration.serverprocess import ServerProcess, start_server

KIND = {"rabbitmq": "queue", "kafka": "topic"}


async def wait_for(check: Any, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out waiting")


async def counts(http: httpx.AsyncClient, server: ServerProcess) -> dict[str, int]:
    found = (await http.get(server.url + "/api/triggers")).json()
    return found["messages"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq"])
async def test_a_crash_between_the_commit_and_the_ack_starts_the_run_once(
    broker: str, db_url: str, tmp_path: Path
) -> None:
    url = broker_url(broker)
    destination = f"legato-test-crash-{uuid.uuid4().hex[:12]}"
    name = f"crash-{uuid.uuid4().hex[:8]}"
    args = ("--transport", f"bus={url}")
    first = start_server(tmp_path, *args, db=db_url, env={CRASH_ENV: "1"}, name="first")
    second: ServerProcess | None = None
    http = httpx.AsyncClient(timeout=10)
    try:
        applied = await http.post(
            first.url + "/api/workflows",
            json={
                "name": name,
                "inputs": [{"name": "order", "type": "string"}],
                "steps": {"hold": {"wait": {"for": "1h"}}},
                "triggers": [{"transport": "bus", KIND[broker]: destination}],
            },
        )
        assert applied.status_code == 201, applied.text
        assert applied.json()["name"] == name
        shown = (await http.get(f"{first.url}/api/workflows/{name}")).json()
        assert shown["triggers"] == [{"transport": "bus", KIND[broker]: destination}]
        publisher = open_transport(url)
        await publisher.connect()
        try:
            await publisher.publish(destination, orjson.dumps({"order": "E-1"}), {})
        finally:
            await publisher.close()
        await wait_for(lambda: asyncio.sleep(0, first.proc.poll() is not None))
        assert first.proc.returncode == 9, first.output()

        second = start_server(tmp_path, *args, db=db_url, name="second")
        # The message comes again (Kafka: once the dead member's session has expired).
        restarted = second

        async def again() -> bool:
            return (await counts(http, restarted))["duplicate"] == 1

        await wait_for(again)
        runs = (await http.get(f"{second.url}/api/runs", params={"workflow": name})).json()
        (run,) = runs["runs"]
        detail = (await http.get(f"{second.url}/api/runs/{run['id']}")).json()
        assert detail["input"] == {"order": "E-1"}
        assert await counts(http, second) == {
            "started": 0,
            "duplicate": 1,
            "rejected": 0,
            "filtered": 0,
        }
        metrics = (await http.get(second.url + "/metrics")).text
        assert 'legato_trigger_messages_total{outcome="duplicate"} 1.0' in metrics
    finally:
        await http.aclose()
        for server in (first, second):
            if server is not None:
                server.stop()
        await remove(url, [destination])
