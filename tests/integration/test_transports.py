"""Each transport against its real broker: delivery with headers, redelivery when a handler fails,
and the engine's emit and listen steps talking to a service through the broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from legato import Engine
from legato.transports import Message, Transport, open_transport
from tests.integration.brokers import broker_url, remove

MADE: list[str] = []


@pytest.fixture(params=["nats", "rabbitmq", "kafka"])
async def url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The broker's URL; what the test made on it is deleted afterwards."""
    found = broker_url(request.param)
    MADE.clear()
    yield found
    await remove(found, list(MADE))


@pytest.fixture
async def transport(url: str) -> AsyncIterator[Transport]:
    t = open_transport(url)
    await t.connect()
    yield t
    await t.close()


def fresh(what: str) -> str:
    name = f"legato-test-{what}-{uuid.uuid4().hex[:12]}"
    MADE.append(name)
    return name


async def until(condition: object, seconds: float = 15) -> None:
    for _ in range(int(seconds / 0.02)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting")


async def test_messages_arrive_with_their_headers_and_a_failed_handler_gets_them_again(
    transport: Transport,
) -> None:
    destination = fresh("contract")
    got: list[Message] = []
    failed: list[bytes] = []

    async def handler(message: Message) -> None:
        if message.data == b'"second"' and not failed:
            failed.append(message.data)
            raise RuntimeError("not yet")
        got.append(message)

    await transport.subscribe(destination, handler)
    for data in (b'"first"', b'"second"', b'"third"'):
        await transport.publish(destination, data, {"Legato-Run-Id": "r1", "X-Kind": "test"})
    await until(lambda: len(got) == 3)
    assert sorted(m.data for m in got) == [b'"first"', b'"second"', b'"third"']
    assert failed == [b'"second"']  # refused once, delivered again
    assert all(m.headers.get("Legato-Run-Id") == "r1" for m in got)
    assert all(m.destination == destination for m in got)


async def test_an_emitted_command_and_its_reply_drive_a_run(url: str, tmp_path: object) -> None:
    commands, replies = fresh("commands"), fresh("replies")
    service = open_transport(url)
    await service.connect()

    async def billing(message: Message) -> None:  # a service answering over the broker
        order = orjson.loads(message.data)
        await service.publish(
            replies,
            orjson.dumps({"invoice": f"INV-{order['order']}"}),
            {
                "Legato-Event-Type": "invoice.ready",
                "Legato-Run-Id": message.headers["Legato-Run-Id"],
            },
        )

    await service.subscribe(commands, billing)
    engine = Engine.open(f"sqlite:///{tmp_path}/bus.db")
    engine.add_transport("bus", url)
    engine.subscribe_events("bus", replies)
    try:
        async with engine:
            await engine.apply(
                {
                    "name": "bill",
                    "inputs": [{"name": "order", "type": "string"}],
                    "steps": {
                        "ask": {
                            "emit": {
                                "transport": "bus",
                                "to": commands,
                                "message": {"order": "{{ input.order }}"},
                            }
                        },
                        "answer": {
                            "depends_on": "ask",
                            "timeout": "20s",
                            "listen": {"event": "invoice.ready", "key": "{{ run.id }}"},
                        },
                    },
                    "output": "{{ steps.answer.output.invoice }}",
                }
            )
            run = await engine.run("bill", {"order": "A-7"}, timeout=30)
    finally:
        await service.close()
    assert run.info.status == "succeeded", run.steps
    assert run.info.output == "INV-A-7"
    assert run.steps["ask"].output == {"published": f"bus:{commands}", "run_id": run.info.id}


async def test_an_unknown_transport_fails_the_emit_step(tmp_path: object) -> None:
    async with Engine.open(f"sqlite:///{tmp_path}/none.db") as engine:
        await engine.apply(
            {"name": "lost", "steps": {"x": {"emit": {"transport": "nowhere", "to": "q"}}}}
        )
        run = await engine.run("lost", {}, timeout=5)
    error = run.steps["x"].error
    assert (
        error is not None
        and error["kind"] == "config"
        and "no transport named 'nowhere'" in error["message"]
    )


def test_nats_names_are_distinct_for_distinct_subjects() -> None:
    from legato.transports.nats import _name

    assert _name("a.b") != _name("a_b")
    assert _name("x.*") != _name("x.>")
    assert _name("orders.created") == _name("orders.created")
