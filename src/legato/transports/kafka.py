"""Kafka through aiokafka: `kafka://host:port`; a destination is a topic, consumers share a group
(`legato.<topic>` unless the subscription names one: one group per topic, so a member of another
topic's group that died, or is joining, never holds this topic's consumers up in a rebalance) and
commit a record's offset only after its handler returned (at-least-once).

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

from legato.transports import Failures, Handler, Message, connect_bounded, producer_id

log = logging.getLogger("legato.transports.kafka")


class KafkaTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self._servers = url.split("://", 1)[1]
        self._producer: AIOKafkaProducer | None = None
        self._consumers: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        async def attempt() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(bootstrap_servers=self._servers, acks="all")
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            return producer

        self._producer = await connect_bounded(attempt)

    async def close(self) -> None:
        for task in self._consumers:  # each stops its consumer (leaving its group) on the way out
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        subscription is missed). Returns at once: joining the group waits for the broker to drop
        a dead member's session (a process killed a moment ago), which must not hold up the start
        of a server; the broker's address was checked by `connect`."""
        task = asyncio.create_task(
            self._consume(destination, handler, group or f"legato.{destination}")
        )
        self._consumers.append(task)

    async def _consume(self, destination: str, handler: Handler, group: str) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                destination,
                bootstrap_servers=self._servers,
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            try:
                await consumer.start()
                await _deliver(consumer, destination, handler)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away, or the group could not be joined
                log.exception("consuming %s failed; joining again", destination)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


async def _deliver(consumer: AIOKafkaConsumer, destination: str, handler: Handler) -> None:
    """Hand each record to `handler`, then commit the offset past it; return never."""
    failures = Failures(log, destination)
    while True:
        try:
            async for record in consumer:
                message = _message(destination, record)
                while True:
                    try:
                        await handler(message)
                        failures.succeeded()
                        break
                    except Exception as exc:  # at least once: the same record, after a pause
                        await asyncio.sleep(failures.failed(exc))
                partition = TopicPartition(record.topic, record.partition)
                await consumer.commit({partition: record.offset + 1})
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed commit or a rebalance: uncommitted records come again
            log.exception("consuming %s failed; resuming", destination)
            await asyncio.sleep(1)


def _message(destination: str, record: ConsumerRecord[bytes, bytes]) -> Message:
    headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return Message(
        destination,
        record.value or b"",
        headers,
        id=producer_id(headers)
        or f"{record.topic}/{record.partition}/{record.offset}@{record.timestamp}",
        key=key,
    )
