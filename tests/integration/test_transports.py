"""Each transport against its real broker: delivery with headers, redelivery when a handler fails,
and the engine's emit and listen steps talking to a service through the broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from legato import Engine
from legato.transports import Message, Transport, open_transport
from tests.integration.brokers import broker_url, remove
from tests.integration.serverprocess import free_port

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


async def until(condition: object, seconds: float = 60) -> None:
    """Upper bound only: a Kafka group join on a loaded machine can take tens of seconds."""
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

    await service.subscribe(commands, billing, group=f"billing-{commands}")
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
                            "timeout": "90s",
                            "listen": {"event": "invoice.ready", "key": "{{ run.id }}"},
                        },
                    },
                    "output": "{{ steps.answer.output.invoice }}",
                }
            )
            run = await engine.run("bill", {"order": "A-7"}, timeout=120)
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


CLOSED = {
    "nats": "nats://tok:s3cret@127.0.0.1:{port}",
    "rabbitmq": "amqp://guest:s3cret@127.0.0.1:{port}/",
    "kafka": "kafka://127.0.0.1:{port}",
}


async def test_a_closed_port_fails_the_connect_after_a_few_attempts() -> None:
    """Each adapter gives up after CONNECT_ATTEMPTS tries (about 10 s), saying so."""
    from legato.transports import ConnectFailed

    async def attempt(url: str) -> tuple[BaseException | None, float]:
        started = time.monotonic()
        transport = open_transport(url)
        try:
            await transport.connect()
        except ConnectFailed as exc:
            return exc, time.monotonic() - started
        finally:
            await transport.close()
        return None, time.monotonic() - started

    urls = [u.format(port=free_port()) for u in CLOSED.values()]
    for (error, seconds), url in zip(
        await asyncio.gather(*(attempt(u) for u in urls)), urls, strict=True
    ):
        assert error is not None, url
        assert "no answer after 5 attempts over 8 s" in str(error), (url, error)
        assert 7 <= seconds < 20, (url, seconds)


def test_serve_with_a_broker_that_does_not_answer_stops_and_names_the_transport(
    tmp_path: Path,
) -> None:
    """`legato serve --transport x=URL` on a closed port: exit 2, the transport's name and URL
    (its password masked), no traceback; for each kind of broker."""
    env = {k: v for k, v in os.environ.items() if k != "LEGATO_API_TOKEN"}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for kind, url in CLOSED.items():
            db = f"sqlite:///{tmp_path / kind}.db"
            closed = f"{kind}x={url.format(port=free_port())}"
            args = ("serve", "--port", "0", "--db", db, "--transport", closed)
            procs[kind] = subprocess.Popen(
                [sys.executable, "-m", "legato.cli", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        for kind, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 2, (kind, err)
            assert "Traceback" not in err, err
            assert f"cannot connect transport '{kind}x'" in err, err
            assert "no answer after 5 attempts" in err, err
            assert "s3cret" not in err, err
            assert ":***@127.0.0.1" in err or kind == "kafka", err
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
