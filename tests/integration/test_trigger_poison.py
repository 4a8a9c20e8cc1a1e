"""Messages that could never start a run are rejected (acknowledged, counted, listed), whatever
fails on them; a handler that fails for a while (a store that is down) has its message delivered
again after a growing pause, with one log line per burst; the default key survives a broker whose
offsets start again from 0, and a producer's own id header is the default key. Real brokers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import legato.transports
from legato import Engine
from legato.engine import triggers as engine_triggers
from legato.transports import Message, Transport, open_transport
from tests.integration.brokers import broker_url, postgres_url, remove
from tests.integration.serverprocess import start_server
from tests.integration.test_cli import _run_async
from tests.integration.test_triggers import KIND, bus, orders, publisher, runs_of, until

__all__ = ["bus", "publisher"]  # fixtures


async def test_any_failure_on_a_message_rejects_it_and_blocks_nothing(
    bus: tuple[str, str, str], publisher: Transport, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_triggers, "MAX_MESSAGE", 2000)
    broker, url, destination = bus
    name = f"poison-{uuid.uuid4().hex[:8]}"
    key = (
        "{{ {1: 2} if message.bad | default(false) "
        "else (none if message.nokey | default(false) else message.order) }}"
    )
    engine = Engine.open(db_url)
    engine.add_transport("bus", url)
    async with engine:
        await engine.apply(orders(name, broker, destination, key=key))
        for body in (
            {"bad": True},  # a key JSON cannot hold: TypeError, not a template error
            {"nokey": True},
            {"order": "x" * 3000},  # over the (lowered) size bound
            {"order": "A"},  # behind them all: not blocked
        ):
            await publisher.publish(destination, orjson.dumps(body), {})
        stats = engine.triggers.stats
        await until(lambda: stats["started"] + stats["rejected"] == 4)
        await asyncio.sleep(0.3)  # nothing delivered again
        runs = await runs_of(engine, name)
        listing = engine.triggers.listing()
    assert stats == {"started": 1, "duplicate": 0, "rejected": 3, "filtered": 0}
    assert [r.input for r in runs] == [{"order": "A"}]
    reasons = sorted(r["reason"] for r in engine.triggers.rejected)
    assert "the key template rendered null" in reasons
    assert any("a value JSON cannot" in r for r in reasons), reasons
    assert any("more than the 2000" in r for r in reasons), reasons
    assert listing[0][KIND[broker]] == destination
    assert listing[0]["messages"] == {"started": 1, "duplicate": 0, "rejected": 3, "filtered": 0}


async def test_a_failing_handler_gets_its_message_again_after_a_pause_logged_once(
    bus: tuple[str, str, str],
    publisher: Transport,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two failures, then success: pauses of PAUSE_FIRST then twice that (not a hot loop), one
    error line with its traceback, and one line saying it works again."""
    monkeypatch.setattr(legato.transports, "PAUSE_FIRST", 0.4)
    _, url, destination = bus
    seen: list[float] = []

    async def handler(message: Message) -> None:
        seen.append(time.monotonic())
        if len(seen) <= 2:
            raise ConnectionError("the store is down")

    consumer = open_transport(url)
    await consumer.connect()
    try:
        caplog.set_level(logging.INFO, "legato.transports")
        await consumer.subscribe(destination, handler, f"pause-{uuid.uuid4().hex[:8]}")
        await publisher.publish(destination, b'{"n": 1}', {})
        await until(lambda: len(seen) >= 3, 30)
        await asyncio.sleep(1)
    finally:
        await consumer.close()
    assert len(seen) == 3, seen
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert gaps[0] >= 0.35 and gaps[1] >= 0.75, gaps
    records = [r for r in caplog.records if r.name.startswith("legato.transports")]
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert any("works again after 2 failures" in r.getMessage() for r in records)


async def test_a_producer_id_header_is_the_default_key(
    bus: tuple[str, str, str], publisher: Transport, tmp_path: Any
) -> None:
    broker, url, destination = bus
    name = f"idhdr-{uuid.uuid4().hex[:8]}"
    engine = Engine.open(f"sqlite:///{tmp_path}/id.db")
    engine.add_transport("bus", url)
    stats = engine.triggers.stats
    async with engine:
        await engine.apply(orders(name, broker, destination))
        await publisher.publish(destination, b'{"order": "1"}', {"Legato-Message-Id": "o-7"})
        await publisher.publish(destination, b'{"order": "2"}', {"legato-message-id": "o-7"})
        await publisher.publish(destination, b'{"order": "3"}', {"Message-Id": "o-8"})
        await publisher.publish(destination, b'{"order": "4"}', {})
        await until(lambda: stats["started"] + stats["duplicate"] == 4)
        runs = await runs_of(engine, name)
    assert stats["started"] == 3 and stats["duplicate"] == 1
    # Kafka spreads keyless records over partitions: which of the two sharing o-7 comes first
    # is not fixed, but only one of them starts a run.
    orders_ = sorted(r.input["order"] for r in runs)
    assert orders_ in (["1", "3", "4"], ["2", "3", "4"]), orders_


async def test_offsets_counted_again_from_zero_start_new_runs(db_url: str) -> None:
    """tansu keeps its log in memory: restarted, a topic's offsets begin at 0 again. The second
    batch's messages have the first batch's topic/partition/offset, and still start their runs."""
    from tests.integration.kafka import free_port, start_tansu, stop_tansu, tansu_binary

    binary, port = tansu_binary(), free_port()
    url = f"kafka://127.0.0.1:{port}"
    topic = f"legato-test-restart-{uuid.uuid4().hex[:8]}"
    name = f"restart-{uuid.uuid4().hex[:8]}"
    proc, log = start_tansu(binary, port)
    engine = Engine.open(db_url)
    engine.add_transport("bus", url)
    stats = engine.triggers.stats
    try:
        async with engine:
            await engine.apply(orders(name, "kafka", topic))
            await _publish(url, topic, ["a1", "a2", "a3"])
            await until(lambda: stats["started"] == 3)
            stop_tansu(proc, log)
            proc, log = start_tansu(binary, port)
            await _publish(url, topic, ["b1", "b2", "b3"])
            # A commit cut by the restart may bring a record back: that is a duplicate, fine; what
            # must not happen is a second-batch message taken for a first-batch one.
            await until(lambda: stats["started"] >= 6, 90)
            runs = await runs_of(engine, name)
    finally:
        stop_tansu(proc, log)
    assert stats["started"] == 6, stats
    assert sorted(r.input["order"] for r in runs) == ["a1", "a2", "a3", "b1", "b2", "b3"]


async def _publish(url: str, topic: str, orders_: list[str]) -> None:
    transport = open_transport(url)
    await transport.connect()
    try:
        for order in orders_:
            await transport.publish(topic, orjson.dumps({"order": order}), {})
    finally:
        await transport.close()


async def test_the_reviewers_poison_key_through_a_server_and_the_cli(
    tmp_path: Path, db_url: str
) -> None:
    """RabbitMQ, the `legato serve` process: the poison message is rejected once (no requeue
    loop, one warning in the log), the next message starts its run, and `legato triggers` shows
    the subscription's own counts and the reason."""
    url = broker_url("rabbitmq")
    queue = f"legato-test-poison-{uuid.uuid4().hex[:12]}"
    name = f"rbadkey-{uuid.uuid4().hex[:8]}"
    server = start_server(tmp_path, "--transport", f"r={url}", db=db_url)
    publisher = open_transport(url)
    await publisher.connect()
    try:
        spec = {
            "name": name,
            "steps": {"s": {"wait": {"for": "1h"}}},
            "triggers": [
                {
                    "transport": "r",
                    "queue": queue,
                    "key": "{{ {1: 2} if message.bad | default(false) else message.id }}",
                }
            ],
        }
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.post("/api/workflows", json=spec)).status_code in (200, 201)
            await publisher.publish(queue, b'{"bad": true}', {})
            await publisher.publish(queue, b'{"id": "m-1"}', {})

            async def counts() -> dict[str, int]:
                found = (await http.get("/api/triggers")).json()["subscribed"]
                return dict(found[0]["messages"]) if found else {}

            for _ in range(400):
                seen = await counts()
                if seen.get("started", 0) + seen.get("rejected", 0) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)  # a requeue loop would show by now
            assert await counts() == {"started": 1, "duplicate": 0, "rejected": 1, "filtered": 0}
            metrics = (await http.get("/metrics")).text
            series = "legato_trigger_workflow_messages_total"
            assert f'{series}{{outcome="rejected",workflow="{name}"}} 1.0' in metrics
        code, out, err = await _run_async("triggers", "--url", server.url)
        assert code == 0, err
        assert f"queue {queue} (group legato.{name}): started 1, duplicate 0, rejected 1" in out
        assert "the key template rendered a value JSON cannot" in out
    finally:
        await publisher.close()
        server.stop()
        await remove(url, [queue])
    log = server.output()
    assert log.count("starts no run") == 1 and "Traceback" not in log, log[-3000:]


async def test_a_key_with_nul_or_too_long_is_stored_hashed_and_still_dedupes(
    bus: tuple[str, str, str], publisher: Transport, db_url: str
) -> None:
    """Review 5, 1: PostgreSQL refuses NUL in text. A key holding one (a body's id, a producer's
    `Message-Id`) used to fail the receipt's insert, taken for a store outage: redelivered forever.
    Now it is stored as its hash, starts its run once, and blocks nothing behind it."""
    broker, url, destination = bus
    name = f"nulkey-{uuid.uuid4().hex[:8]}"
    engine = Engine.open(db_url)
    engine.add_transport("bus", url)
    stats = engine.triggers.stats
    async with engine:
        await engine.apply(orders(name, broker, destination, key="{{ message.order }}"))
        for order in ("a\u0000b", "a\u0000b", "L" * 3000, "after"):
            await publisher.publish(destination, orjson.dumps({"order": order}), {})
        await until(lambda: stats["started"] + stats["duplicate"] + stats["rejected"] == 4)
        plain = orders(name + "-d", broker, destination)  # the default key: a producer's header
        await engine.apply(plain)
        wf2, version2 = await engine.workflow_version(name + "-d")
        bad = Message(destination, b'{"order": "x"}', {"Message-Id": "bad\x00id"}, id="bad\x00id")
        first = await engine.triggers._start(wf2, version2, wf2.triggers[0], bad)
        again = await engine.triggers._start(wf2, version2, wf2.triggers[0], bad)
        runs = await runs_of(engine, name)
    assert stats["rejected"] == 0 and stats["duplicate"] == 2, stats
    assert first is not None and again == first
    assert sorted(r.input["order"] for r in runs) == ["L" * 3000, "a\u0000b", "after"]


async def test_a_data_error_of_the_store_rejects_and_an_outage_does_not() -> None:
    """What PostgreSQL raises for this message's data (class 22) is a rejection; a connection
    that fails is a store outage (delivered again)."""
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(postgres_url())
    try:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.fetchval("SELECT $1::text", "bad\x00id")
    finally:
        await conn.close()
    assert engine_triggers.data_error(caught.value)
    assert not engine_triggers.data_error(ConnectionRefusedError(111, "refused"))
    assert not engine_triggers.data_error(RuntimeError("a bug"))


async def test_the_same_producer_id_on_two_triggers_starts_two_runs(
    bus: tuple[str, str, str], publisher: Transport, tmp_path: Path
) -> None:
    """Review 5, 3: the default key is scoped by transport and destination, so a `Message-Id`
    reused on another destination of the workflow is another message (it used to be swallowed)."""
    broker, url, destination = bus
    other = destination + "-b"
    name = f"scoped-{uuid.uuid4().hex[:8]}"
    spec = orders(name, broker, destination)
    spec["triggers"].append({"transport": "bus", KIND[broker]: other})
    engine = Engine.open(f"sqlite:///{tmp_path}/scoped.db")
    engine.add_transport("bus", url)
    stats = engine.triggers.stats
    try:
        async with engine:
            await engine.apply(spec)
            for where, order in ((destination, "1"), (other, "2"), (destination, "3")):
                body = orjson.dumps({"order": order})
                await publisher.publish(where, body, {"Message-Id": "42"})
            await until(lambda: stats["started"] + stats["duplicate"] == 3)
            runs = await runs_of(engine, name)
    finally:
        await remove(url, [other])
    assert stats["started"] == 2 and stats["duplicate"] == 1, stats
    orders_ = sorted(r.input["order"] for r in runs)  # "1" or "3" first: partitions may reorder
    assert orders_ in (["1", "2"], ["2", "3"]), orders_
