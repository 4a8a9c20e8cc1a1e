"""Broker messages start runs: each message with its trigger's filter, key and input, on every
broker (Kafka through the tansu broker the tests start), every backend; a key delivered twice starts
one run, also when several engines share PostgreSQL and the broker's messages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from legato import Engine
from legato.errors import DefinitionError
from legato.transports import Message, Transport, open_transport
from tests.integration.brokers import broker_url, remove
from tests.integration.serverprocess import ServerProcess

KIND = {"nats": "subject", "rabbitmq": "queue", "kafka": "topic"}


@pytest.fixture(params=["nats", "rabbitmq", "kafka"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str, str]]:
    """(broker, its URL, a fresh destination), the destination deleted afterwards."""
    url = broker_url(request.param)
    destination = f"legato-test-trigger-{uuid.uuid4().hex[:12]}"
    yield request.param, url, destination
    await remove(url, [destination])


@pytest.fixture
async def publisher(bus: tuple[str, str, str]) -> AsyncIterator[Transport]:
    transport = open_transport(bus[1])
    await transport.connect()
    yield transport
    await transport.close()


def orders(name: str, broker: str, destination: str, **trigger: Any) -> dict[str, Any]:
    return {
        "name": name,
        "inputs": [{"name": "order", "type": "string"}],
        "steps": {"hold": {"wait": {"for": "1h"}}},
        "triggers": [{"transport": "bus", KIND[broker]: destination, **trigger}],
    }


async def until(condition: Any, seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


async def runs_of(engine: Engine, workflow: str) -> list[Any]:
    return await engine.store.list_runs(workflow, None, 500)


async def test_messages_start_runs_once_per_key_through_filter_and_input(
    bus: tuple[str, str, str], publisher: Transport, db_url: str
) -> None:
    broker, url, destination = bus
    name = f"orders-{uuid.uuid4().hex[:8]}"
    engine = Engine.open(db_url)
    engine.add_transport("bus", url)
    async with engine:
        await engine.apply(
            orders(
                name,
                broker,
                destination,
                filter="{{ message.kind | default('') != 'ignore' }}",
                key="{{ message.order }}",
                input={"order": "{{ message.order }}"},
            )
        )
        assert engine.triggers.listing() == [
            {
                "workflow": name,
                "transport": "bus",
                KIND[broker]: destination,
                "group": f"legato.{name}",
                "messages": {"started": 0, "duplicate": 0, "rejected": 0, "filtered": 0},
            }
        ]
        for body in (
            {"order": "A-1"},
            {"order": "A-1", "again": True},  # the same key: no second run
            {"order": "A-2"},
            {"order": "A-3", "kind": "ignore"},  # filtered out
            {"order": 5},  # `order` must be a string: rejected, acknowledged
        ):
            await publisher.publish(destination, orjson.dumps(body), {"X-Source": "test"})
        await publisher.publish(destination, b"not json", {})  # no key: rejected
        stats = engine.triggers.stats
        await until(lambda: sum(stats.values()) == 6)
        runs = await runs_of(engine, name)
    assert stats == {"started": 2, "duplicate": 1, "rejected": 2, "filtered": 1}
    assert sorted(r.input["order"] for r in runs) == ["A-1", "A-2"]
    reasons = [r["reason"] for r in engine.triggers.rejected]
    assert any("input.order" in r for r in reasons), reasons
    assert any("no dedupe key" in r or "template failed" in r for r in reasons), reasons


async def test_the_default_key_is_the_message_id_and_the_default_input_the_message(
    bus: tuple[str, str, str], publisher: Transport, tmp_path: Any
) -> None:
    """Two messages with one body are two runs; one message delivered twice (the same id) is one."""
    broker, url, destination = bus
    name = f"plain-{uuid.uuid4().hex[:8]}"
    engine = Engine.open(f"sqlite:///{tmp_path}/plain.db")
    engine.add_transport("bus", url)
    stats = engine.triggers.stats
    seen: list[Message] = []
    handle = engine.triggers.on_message

    async def noting(workflow: str, transport: str, where: str, message: Message) -> None:
        seen.append(message)
        await handle(workflow, transport, where, message)

    engine.triggers.on_message = noting  # type: ignore[method-assign,assignment]
    async with engine:
        await engine.apply(orders(name, broker, destination))
        for _ in range(2):
            await publisher.publish(destination, b'{"order": "B-1"}', {})
        await until(lambda: stats["started"] == 2)
        expected = await _deliver_twice(broker, url, seen[0], engine, name)
        await until(lambda: stats["duplicate"] == 1)
        runs = await runs_of(engine, name)
    assert [r.input for r in runs] == [{"order": "B-1"}] * expected
    assert stats == {"started": expected, "duplicate": 1, "rejected": 0, "filtered": 0}


async def _deliver_twice(broker: str, url: str, first: Message, engine: Engine, name: str) -> int:
    """One message delivered twice; the number of runs there must then be. Kafka's and NATS's ids
    are positions in the log: the first message is handed to the trigger again, as a redelivery
    would. AMQP's message_id is the publisher's: one id is published twice."""
    if broker == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel()
            for _ in range(2):
                await channel.default_exchange.publish(
                    aio_pika.Message(b'{"order": "B-1"}', message_id="fixed-id"),
                    routing_key=first.destination,
                )
        finally:
            await conn.close()
        return 3
    assert first.id is not None and first.id.count("/") == (2 if broker == "kafka" else 1)
    await engine.triggers.on_message(name, "bus", first.destination, first)
    return 2


async def test_several_engines_sharing_postgres_start_one_run_per_key(
    bus: tuple[str, str, str], publisher: Transport, shared_db: str
) -> None:
    broker, url, destination = bus
    name = f"shared-{uuid.uuid4().hex[:8]}"
    engines = [Engine.open(shared_db) for _ in range(2)]
    for engine in engines:
        engine.add_transport("bus", url)
    async with engines[0], engines[1]:
        for engine in engines:
            await engine.apply(
                orders(name, broker, destination, key="{{ message.order }}", input="{{ message }}")
            )
        for i in range(10):
            for _ in range(2):  # each order twice
                await publisher.publish(destination, orjson.dumps({"order": f"C-{i}"}), {})

        def handled() -> int:
            return sum(sum(e.triggers.stats.values()) for e in engines)

        await until(lambda: handled() == 20)
        runs = await runs_of(engines[0], name)
    assert sorted(r.input["order"] for r in runs) == sorted(f"C-{i}" for i in range(10))
    assert sum(e.triggers.stats["started"] for e in engines) == 10
    assert sum(e.triggers.stats["duplicate"] for e in engines) == 10


async def test_concurrent_deliveries_of_one_key_start_one_run(shared_db: str) -> None:
    """The receipt's unique key under concurrency: two engines, eight deliveries at once."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    engines = [Engine.open(shared_db) for _ in range(2)]
    for engine in engines:
        engine.add_transport("bus", "nats://127.0.0.1:1")  # never connected: not started
    for engine in engines:
        await engine.store.open()
        await engine.register(_built(name))
    try:
        message = Message("q", b'{"order": "D-1"}', id="q/1")
        await asyncio.gather(
            *(engines[i % 2].triggers.on_message(name, "bus", "q", message) for i in range(8))
        )
        runs = await runs_of(engines[0], name)
    finally:
        for engine in engines:
            await engine.store.close()
    assert len(runs) == 1
    assert sum(e.triggers.stats["started"] for e in engines) == 1
    assert sum(e.triggers.stats["duplicate"] for e in engines) == 7


def _built(name: str) -> Any:
    from legato.model.build import build_workflow

    return build_workflow(orders(name, "rabbitmq", "q"))


async def test_a_trigger_on_a_transport_the_engine_lacks_is_refused(tmp_path: Any) -> None:
    async with Engine.open(f"sqlite:///{tmp_path}/none.db") as engine:
        with pytest.raises(DefinitionError) as info:
            await engine.apply(orders("lost", "kafka", "t"))
        assert await engine.store.list_workflows() == []
    (problem,) = info.value.problems
    assert problem.path == "triggers[0].transport"
    assert "no transport named 'bus'" in problem.message


def test_the_api_refuses_an_unknown_transport_and_shows_triggers(server: ServerProcess) -> None:
    refused = httpx.post(server.url + "/api/workflows", json=orders("lost", "kafka", "t"))
    assert refused.status_code == 422
    assert refused.json()["problems"][0]["path"] == "triggers[0].transport"
    listing = httpx.get(server.url + "/api/triggers").json()
    assert listing["subscribed"] == [] and listing["messages"]["started"] == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert 'legato_trigger_messages_total{outcome="duplicate"} 0.0' in metrics


def test_the_cli_lists_the_servers_triggers(server: ServerProcess) -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "legato.cli", "triggers", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "LEGATO_API_TOKEN"},
    )
    assert done.returncode == 0, done.stderr
    assert "messages: started 0, duplicate 0, rejected 0, filtered 0" in done.stdout


async def test_a_message_for_a_workflow_that_cannot_be_loaded_is_rejected(tmp_path: Any) -> None:
    engine = Engine.open(f"sqlite:///{tmp_path}/gone.db")
    await engine.store.open()
    try:
        await engine.triggers.on_message("nowhere", "bus", "q", Message("q", b"{}", id="q/1"))
    finally:
        await engine.store.close()
    assert engine.triggers.stats["rejected"] == 1
    (rejected,) = engine.triggers.rejected
    assert "no workflow named 'nowhere'" in rejected["reason"]
