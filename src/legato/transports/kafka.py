"""Kafka through aiokafka: `kafka://host:port`; a destination is a topic, consumers share the group
`legato` and commit an offset only after the handler returned (at-least-once).

Tested where a broker is reachable (LEGATO_KAFKA_URL, or 127.0.0.1:9092); this machine runs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from legato.transports import Handler, Message

log = logging.getLogger("legato.transports.kafka")


class KafkaTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self._servers = url.split("://", 1)[1]
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[tuple[AIOKafkaConsumer, asyncio.Task[None]]] = []

    async def connect(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self._servers, acks="all")
        await self._producer.start()

    async def close(self) -> None:
        for consumer, task in self._consumers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await consumer.stop()
        self._consumers.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, destination: str, data: bytes, headers: dict[str, str]) -> None:
        if self._producer is None:
            raise RuntimeError("the Kafka transport is not connected")
        await self._producer.send_and_wait(
            destination, data, headers=[(k, v.encode()) for k, v in headers.items()]
        )

    async def subscribe(self, destination: str, handler: Handler) -> None:
        consumer = AIOKafkaConsumer(
            destination,
            bootstrap_servers=self._servers,
            group_id="legato",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()

        async def consume() -> None:
            while True:
                try:
                    async for record in consumer:
                        headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
                        message = Message(destination, record.value or b"", headers)
                        while True:
                            try:
                                await handler(message)
                                break
                            except Exception:  # at least once: the same record, after a pause
                                log.exception("handling a message from %s failed", destination)
                                await asyncio.sleep(1)
                        await consumer.commit()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a failed commit or a rebalance: uncommitted records come again
                    log.exception("consuming %s failed; resuming", destination)
                    await asyncio.sleep(1)

        self._consumers.append((consumer, asyncio.create_task(consume())))
