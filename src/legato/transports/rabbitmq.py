"""RabbitMQ through aio-pika: durable queues, persistent messages, publisher confirms, manual acks.

A destination is a queue name (published through the default exchange). Every message published
here carries a fresh AMQP `message_id`, which a trigger uses as the message's id (a header named in
ID_HEADERS comes first). A message whose handler fails is requeued after a pause that grows while
failures go on, so a store that is down is not asked hundreds of times a second.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from legato.transports import (
    CONNECT_TIMEOUT,
    Failures,
    Handler,
    Message,
    connect_bounded,
    producer_id,
)

log = logging.getLogger("legato.transports.rabbitmq")


class RabbitTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queues: set[str] = set()

    async def connect(self) -> None:
        self._conn = await connect_bounded(
            lambda: aio_pika.connect_robust(self.url, timeout=CONNECT_TIMEOUT)
        )
        self._channel = await self._conn.channel(publisher_confirms=True)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _chan(self) -> AbstractRobustChannel:
        if self._channel is None:
            raise RuntimeError("the RabbitMQ transport is not connected")
        return self._channel

    async def _queue(self, name: str) -> aio_pika.abc.AbstractQueue:
        return await self._chan().declare_queue(name, durable=True)

    async def publish(self, destination: str, data: bytes, headers: dict[str, str]) -> None:
        if destination not in self._queues:
            await self._queue(destination)
            self._queues.add(destination)
        message = aio_pika.Message(
            data,
            headers=dict(headers),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=uuid.uuid4().hex,
        )
        await self._chan().default_exchange.publish(message, routing_key=destination)

    async def subscribe(self, destination: str, handler: Handler, group: str | None = None) -> None:
        """Consumers of one queue share its messages, whatever their `group`."""
        queue = await self._queue(destination)
        failures = Failures(log, destination)

        async def deliver(incoming: AbstractIncomingMessage) -> None:
            headers = {str(k): str(v) for k, v in (incoming.headers or {}).items()}
            ident = producer_id(headers) or incoming.message_id
            try:
                await handler(Message(destination, incoming.body, headers, id=ident))
            except Exception as exc:  # requeued after the pause, not at once
                await asyncio.sleep(failures.failed(exc))
                await incoming.nack(requeue=True)
                return
            failures.succeeded()
            await incoming.ack()

        await queue.consume(deliver)
