"""Kafka through aiokafka: `kafka://host:port`; a destination is a topic, consumers share a group
(`legato` unless the subscription names one) and commit a record's offset only after its handler
returned (at-least-once).

Records are handled one at a time, in order; after each, exactly the offset past that record is
committed for its partition (not the consumer's whole position, which a rebalance may have moved).
A failed commit (a rebalance took the partition) leaves the record to be delivered again, to this
process or another: handlers must be idempotent, as the engine's are (a trigger's receipt, an
event's id). The tests run against a real Kafka-protocol broker they start (tests/integration/kafka.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

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

    async def subscribe(self, destination: str, handler: Handler, group: str | None = None) -> None:
        """A new group starts at the topic's earliest record (none published before the
        subscription is missed)."""
        consumer = AIOKafkaConsumer(
            destination,
            bootstrap_servers=self._servers,
            group_id=group or "legato",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()

        async def consume() -> None:
            while True:
                try:
                    async for record in consumer:
                        message = _message(destination, record)
                        while True:
                            try:
                                await handler(message)
                                break
                            except Exception:  # at least once: the same record, after a pause
                                log.exception("handling a message from %s failed", destination)
                                await asyncio.sleep(1)
                        partition = TopicPartition(record.topic, record.partition)
                        await consumer.commit({partition: record.offset + 1})
                except asyncio.CancelledError:
                    raise
                except Exception:  # a failed commit or a rebalance: uncommitted records come again
                    log.exception("consuming %s failed; resuming", destination)
                    await asyncio.sleep(1)

        self._consumers.append((consumer, asyncio.create_task(consume())))


def _message(destination: str, record: ConsumerRecord[bytes, bytes]) -> Message:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return Message(
        destination,
        record.value or b"",
        headers,
        id=f"{record.topic}/{record.partition}/{record.offset}",
        key=key,
    )
