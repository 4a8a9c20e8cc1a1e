"""Message brokers behind one small protocol: publish bytes with headers to a destination, and
subscribe a handler to one, acknowledging a message only once its handler has returned.

`open_transport(url)` picks the adapter by scheme: `nats://` (NATS JetStream), `amqp://` (RabbitMQ),
`kafka://` (Kafka). Each adapter imports its client library only when it is opened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from legato.errors import LegatoError


@dataclass(frozen=True, slots=True)
class Message:
    """`id`: the broker's own id of the message, stable across redeliveries (Kafka
    `topic/partition/offset`, NATS `stream/sequence`, the AMQP `message_id`), or None when it has
    none. `key`: a Kafka record's key as text."""

    destination: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    id: str | None = None
    key: str | None = None


Handler = Callable[[Message], Awaitable[None]]


class Transport(Protocol):
    url: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, destination: str, data: bytes, headers: dict[str, str]) -> None:
        """Return once the broker has the message (a JetStream ack, a publisher confirm, a
        Kafka ack), so a step that emitted it can be committed as done."""

    async def subscribe(self, destination: str, handler: Handler, group: str | None = None) -> None:
        """Deliver each message to `handler`; ack when it returns, redeliver when it raises.
        Processes subscribing with the same `group` share the messages (each reaches one of them);
        subscriptions with different groups each get every message (Kafka, NATS; a RabbitMQ queue
        is one group whatever the name). None: the transport's default group."""


def open_transport(url: str) -> Transport:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("nats", "tls"):
        from legato.transports.nats import NatsTransport

        return NatsTransport(url)
    if scheme in ("amqp", "amqps"):
        from legato.transports.rabbitmq import RabbitTransport

        return RabbitTransport(url)
    if scheme == "kafka":
        from legato.transports.kafka import KafkaTransport

        return KafkaTransport(url)
    raise LegatoError(
        f"unsupported transport URL {url!r}: use nats://, amqp:// or kafka://host:port"
    )
