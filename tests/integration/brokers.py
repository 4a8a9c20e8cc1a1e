"""The servers the backend and transport tests run against: real ones on this machine.

A broker that does not answer skips its tests with the reason, except under CI=true, where it fails
them (CI's machine runs NATS and RabbitMQ). Kafka's broker is started by the tests themselves (tansu,
see kafka.py), unless LEGATO_KAFKA_URL names one.
"""

from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlsplit

import pytest

BROKERS = {
    "nats": os.environ.get("LEGATO_NATS_URL", "nats://127.0.0.1:4222"),
    "rabbitmq": os.environ.get("LEGATO_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}
REQUIRED_IN_CI = {"nats", "rabbitmq", "postgres"}
POSTGRES = os.environ.get("LEGATO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 0), timeout=1
        ).close()
    except OSError:
        return False
    return True


def postgres_url() -> str:
    """PostgreSQL's URL, or skip (fail under CI=true: CI's machine runs it)."""
    if not _reachable(POSTGRES):
        reason = f"PostgreSQL is not reachable at {POSTGRES}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI must test it")
        pytest.skip(reason)
    return POSTGRES


def broker_url(name: str) -> str:
    """The broker's URL, or skip (fail under CI=true, for the brokers CI runs)."""
    if name == "kafka":
        from tests.integration.kafka import kafka_url

        return kafka_url()
    url = BROKERS[name]
    if not _reachable(url):
        reason = f"{name} is not reachable at {url}"
        if os.environ.get("CI") == "true" and name in REQUIRED_IN_CI:
            pytest.fail(f"{reason}, and CI must test it")
        pytest.skip(reason)
    return url


async def remove(url: str, destinations: list[str]) -> None:
    """Delete what the tests made on a broker (streams, queues), so runs do not pile them up."""
    scheme = url.split("://", 1)[0]
    if scheme == "nats":
        import nats
        from nats.js.errors import NotFoundError

        from legato.transports.nats import _name

        nc = await nats.connect(url)
        js = nc.jetstream()
        for destination in destinations:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(_name(destination))
        await nc.close()
    elif scheme.startswith("amqp"):
        import aio_pika

        conn = await aio_pika.connect(url)
        channel = await conn.channel()
        for destination in destinations:
            await channel.queue_delete(destination)
        await conn.close()
