"""Several processes share one NATS subject: each message reaches exactly one of them, a consumer
made by an older Legato is turned into the shared one, and a broker's refusal names the broker."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import api

from legato import Engine
from legato.errors import LegatoError
from legato.transports import Message
from legato.transports.nats import NatsTransport, _name
from tests.integration.brokers import broker_url, remove


@pytest.fixture
async def subject() -> AsyncIterator[str]:
    url = broker_url("nats")
    name = f"legato-test-shared-{uuid.uuid4().hex[:12]}"
    yield name
    await remove(url, [name])


async def _until(condition: object, seconds: float = 15) -> None:
    for _ in range(int(seconds / 0.02)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting")


async def _subscribers(subject: str, n: int) -> tuple[list[NatsTransport], list[Counter[bytes]]]:
    transports, seen = [], []
    for _ in range(n):
        t = NatsTransport(broker_url("nats"))
        await t.connect()
        got: Counter[bytes] = Counter()

        async def handler(message: Message, got: Counter[bytes] = got) -> None:
            got[message.data] += 1

        await t.subscribe(subject, handler)
        transports.append(t)
        seen.append(got)
    return transports, seen


async def test_two_subscribers_share_a_subject_and_each_message_reaches_one(subject: str) -> None:
    transports, seen = await _subscribers(subject, 2)
    try:
        sent = [f"m{i}".encode() for i in range(200)]
        for data in sent:
            await transports[0].publish(subject, data, {})
        await _until(lambda: sum(sum(c.values()) for c in seen) >= len(sent))
        await asyncio.sleep(0.3)  # a duplicate would show up by now
        both = seen[0] + seen[1]
        assert sorted(both) == sorted(sent) and set(both.values()) == {1}
        assert not set(seen[0]) & set(seen[1])
        assert all(seen), "each subscriber took a share"
    finally:
        for t in transports:
            await t.close()


async def test_an_older_consumer_becomes_the_shared_one_without_a_replay(subject: str) -> None:
    """Made by the Legato before queue groups: a durable without a deliver group. What it had
    acknowledged is not delivered again; what came after it is delivered once."""
    nc = await nats.connect(broker_url("nats"))
    js = nc.jetstream()
    stream = _name(subject)
    await js.add_stream(name=stream, subjects=[subject])
    acked: list[bytes] = []

    async def old(msg: object) -> None:
        acked.append(msg.data)  # type: ignore[attr-defined]
        await msg.ack()  # type: ignore[attr-defined]

    sub = await js.subscribe(subject, durable=_name(subject), cb=old, manual_ack=True)
    for i in range(3):
        await js.publish(subject, f"old{i}".encode())
    await _until(lambda: len(acked) == 3)
    await sub.unsubscribe()
    await js.publish(subject, b"while-down")
    info = await js.consumer_info(stream, _name(subject))
    assert not info.config.deliver_group
    transports, seen = await _subscribers(subject, 2)
    try:
        await transports[0].publish(subject, b"new", {})
        await _until(lambda: sum(sum(c.values()) for c in seen) >= 2)
        await asyncio.sleep(0.3)
        assert sorted(seen[0] + seen[1]) == [b"new", b"while-down"]
        info = await js.consumer_info(stream, _name(subject))
        assert info.config.deliver_group == _name(subject)
    finally:
        for t in transports:
            await t.close()
        await nc.close()


async def test_two_engines_listen_on_one_subject(subject: str, tmp_path: Path) -> None:
    """The second process used to exit: "consumer is already bound"."""
    url = broker_url("nats")
    engines = []
    for i in range(2):
        engine = Engine.open(f"sqlite:///{tmp_path}/e{i}.db")
        engine.add_transport("bus", url)
        engine.subscribe_events("bus", subject)
        await engine.start()
        engines.append(engine)
    for engine in engines:
        await engine.close()


async def test_a_broker_refusal_names_the_broker_not_the_database(
    subject: str, tmp_path: Path
) -> None:
    url = broker_url("nats")
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name=_name(subject), subjects=[subject])
    # A consumer of that name that is some other group's: the subscription is refused.
    await js.add_consumer(
        _name(subject),
        config=api.ConsumerConfig(
            durable_name=_name(subject),
            deliver_group="someone-else",
            deliver_subject=nc.new_inbox(),
            ack_policy=api.AckPolicy.EXPLICIT,
        ),
    )
    await nc.close()
    engine = Engine.open(f"sqlite:///{tmp_path}/e.db")
    engine.add_transport("bus", url)
    engine.subscribe_events("bus", subject)
    with pytest.raises(LegatoError, match=f"on transport 'bus' \\({url}\\)") as caught:
        await engine.start()
    assert "database" not in str(caught.value)
    await engine.close()
