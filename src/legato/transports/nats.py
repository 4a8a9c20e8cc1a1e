"""NATS JetStream: messages persist in a stream, consumers are durable and ack explicitly.

A destination is a subject. Publishing or subscribing makes sure a stream captures the subject (one
stream per subject, named after it), so the first emit never disappears into a subject nobody stores.
Every process subscribing to a subject shares one durable consumer as a queue group (its deliver
group), so several workers can listen to one subject and each message reaches one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import re

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.js import JetStreamContext, api
from nats.js.errors import Error, NotFoundError

from legato.transports import (
    CONNECT_ATTEMPTS,
    CONNECT_PAUSE,
    CONNECT_TIMEOUT,
    ConnectFailed,
    Failures,
    Handler,
    Message,
    failed_after,
    producer_id,
)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")
log = logging.getLogger("legato.transports")


def _name(subject: str) -> str:
    """A stream or consumer name for a subject: readable, and distinct for distinct subjects."""
    digest = hashlib.sha256(subject.encode()).hexdigest()[:10]
    return f"LEGATO_{_NOT_NAME.sub('_', subject)[:40]}_{digest}"


class NatsTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams: set[str] = set()

    async def connect(self) -> None:
        """CONNECT_ATTEMPTS tries (the client's own), then ConnectFailed; once connected, the
        client reconnects for as long as it takes."""
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            log.debug("NATS: %s: %s", type(exc).__name__, exc)

        try:
            nc = await nats.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT,
                reconnect_time_wait=CONNECT_PAUSE,
                max_reconnect_attempts=CONNECT_ATTEMPTS - 1,
                error_cb=on_error,
            )
        except (NoServersError, OSError, TimeoutError) as exc:
            raise ConnectFailed(failed_after(errors[-1] if errors else exc)) from None
        nc.options["max_reconnect_attempts"] = -1  # from now on: until the server is back
        self._nc = nc
        self._js = nc.jetstream()

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.drain()
            self._nc = None

    def _context(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the NATS transport is not connected")
        return self._js

    async def _stream(self, subject: str) -> None:
        if subject in self._streams:
            return
        js = self._context()
        try:
            await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            await js.add_stream(name=_name(subject), subjects=[subject])
        self._streams.add(subject)

    async def publish(self, destination: str, data: bytes, headers: dict[str, str]) -> None:
        await self._stream(destination)
        await self._context().publish(destination, data, headers=headers or None)

    async def subscribe(self, destination: str, handler: Handler, group: str | None = None) -> None:
        """`group` names the durable consumer (None: the one named after the subject alone, as
        event subscriptions always had)."""
        await self._stream(destination)
        failures = Failures(log, destination)

        async def deliver(msg: Msg) -> None:
            meta = msg.metadata
            headers = dict(msg.headers or {})
            # The time the stream stored the message (the same on every redelivery), in µs.
            stored = (meta.timestamp - _EPOCH) // _MICROSECOND if meta.timestamp else 0
            message = Message(
                msg.subject,
                msg.data,
                headers,
                id=producer_id(headers) or f"{meta.stream}/{meta.sequence.stream}@{stored}",
            )
            try:
                await handler(message)
            except Exception as exc:  # delivered again after the pause
                await msg.nak(delay=failures.failed(exc))
                return
            failures.succeeded()
            await msg.ack()

        name = _name(destination if group is None else f"{group}@{destination}")
        await self._as_queue_group(destination, name)
        for attempt in range(3):
            try:
                # The queue name is also the durable consumer's name and its deliver group.
                await self._context().subscribe(
                    destination, queue=name, cb=deliver, manual_ack=True
                )
                return
            except Error:
                # Another process created the consumer between this one's look and its create:
                # bind to that one.
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))

    async def _as_queue_group(self, destination: str, name: str) -> None:
        """A consumer made by an older Legato has no deliver group, so only one process could bind
        it: make it again as a queue group, starting after the last message it had acknowledged
        (what was delivered but not acknowledged comes again)."""
        js = self._context()
        stream = await js.find_stream_name_by_subject(destination)
        try:
            info = await js.consumer_info(stream, name)
        except NotFoundError:
            return
        if info.config.deliver_group:
            return
        start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
        log.warning("making NATS consumer %s a queue group, from stream sequence %d", name, start)
        await js.delete_consumer(stream, name)
        config = api.ConsumerConfig(
            durable_name=name,
            deliver_group=name,
            deliver_subject=self._nc.new_inbox() if self._nc else None,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=info.config.filter_subject,
        )
        with contextlib.suppress(Error):  # another process made it meanwhile, with the same start
            await js.add_consumer(stream, config=config)
