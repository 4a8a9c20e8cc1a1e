"""Message brokers behind one small protocol: publish bytes with headers to a destination, and
subscribe a handler to one, acknowledging a message only once its handler has returned.

`open_transport(url)` picks the adapter by scheme: `nats://` (NATS JetStream), `amqp://` (RabbitMQ),
`kafka://` (Kafka). Each adapter imports its client library only when it is opened.

Connecting is bounded (CONNECT_ATTEMPTS tries, CONNECT_PAUSE seconds apart, about 10 s against a
closed port): a process starting with a broker that does not answer stops and says which, rather
than waiting forever. Once connected, each client reconnects on its own for as long as it takes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from legato.errors import LegatoError


@dataclass(frozen=True, slots=True)
class Message:
    """`id`: the message's id, stable across redeliveries: the producer's own (a header named in
    ID_HEADERS, or the AMQP `message_id`), else the broker's position of it with the time the
    broker stored it (Kafka `topic/partition/offset@timestamp_ms`, NATS
    `stream/sequence@timestamp_us`), so that offsets counted again from 0 (a topic or stream
    re-created, a broker's storage reset) do not repeat an id. None when there is none.
    `key`: a Kafka record's key as text."""

    destination: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    id: str | None = None
    key: str | None = None


Handler = Callable[[Message], Awaitable[None]]
T = TypeVar("T")
# Headers a producer may set to give a message its own id (compared without case, first wins).
ID_HEADERS = ("legato-message-id", "message-id", "nats-msg-id")
PAUSE_FIRST = 1.0  # seconds before a message whose handler failed is delivered again
PAUSE_MAX = 30.0  # the pause doubles while failures go on, up to this


def producer_id(headers: dict[str, str]) -> str | None:
    """The id a producer put in a header (ID_HEADERS), if any."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in ID_HEADERS:
        value = lowered.get(name, "").strip()
        if value:
            return value
    return None


class Failures:
    """A subscription's failing handler (the store is down, say): how long to wait before the
    message comes again (doubling from PAUSE_FIRST to PAUSE_MAX), and one log line per burst of
    failures (with the first traceback) and one when it ends, not one per redelivery."""

    def __init__(self, log: logging.Logger, destination: str) -> None:
        self.log, self.destination = log, destination
        self.count = 0

    def failed(self, exc: BaseException) -> float:
        """Note a failure; the pause before the next delivery, in seconds."""
        self.count += 1
        if self.count == 1:
            self.log.error(
                "handling a message from %s failed; it is delivered again after a pause, "
                "and further failures are counted, not logged, until one succeeds",
                self.destination,
                exc_info=exc,
            )
        return float(min(PAUSE_MAX, PAUSE_FIRST * 2.0 ** min(self.count - 1, 10)))

    def succeeded(self) -> None:
        if self.count:
            self.log.warning(
                "handling messages from %s works again after %d failures",
                self.destination,
                self.count,
            )
            self.count = 0


CONNECT_ATTEMPTS = 5
CONNECT_PAUSE = 2  # seconds between two attempts
CONNECT_TIMEOUT = 2  # seconds one attempt may wait for an answer (a host that drops packets)


class ConnectFailed(ConnectionError):
    """The broker answered no attempt; the message says how long it was tried and the last
    error (the engine names the transport and its URL, credentials masked)."""


async def connect_bounded(connect: Callable[[], Awaitable[T]]) -> T:
    """`connect()` until it succeeds, at most CONNECT_ATTEMPTS times; ConnectFailed after."""
    last: BaseException | None = None
    for attempt in range(CONNECT_ATTEMPTS):
        if attempt:
            await asyncio.sleep(CONNECT_PAUSE)
        try:
            return await connect()
        except Exception as exc:  # refused, timed out, the client's own "cannot connect"
            last = exc
    raise ConnectFailed(failed_after(last))


def failed_after(last: BaseException | None) -> str:
    seconds = (CONNECT_ATTEMPTS - 1) * CONNECT_PAUSE
    text = f"{type(last).__name__}: {last}" if last is not None else "no answer"
    return f"no answer after {CONNECT_ATTEMPTS} attempts over {seconds:.0f} s ({text})"


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
