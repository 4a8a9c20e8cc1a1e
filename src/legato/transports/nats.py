"""NATS JetStream: messages persist in a stream, consumers are durable and ack explicitly.

A destination is a subject. Publishing or subscribing makes sure a stream captures the subject (one
stream per subject, named after it), so the first emit never disappears into a subject nobody stores.
"""

from __future__ import annotations

import hashlib
import re

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from legato.transports import Handler, Message

_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")


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
        self._nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=-1)
        self._js = self._nc.jetstream()

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

    async def subscribe(self, destination: str, handler: Handler) -> None:
        await self._stream(destination)

        async def deliver(msg: Msg) -> None:
            message = Message(msg.subject, msg.data, dict(msg.headers or {}))
            try:
                await handler(message)
            except Exception:
                await msg.nak(delay=1)
                raise
            await msg.ack()

        await self._context().subscribe(
            destination, durable=_name(destination), cb=deliver, manual_ack=True
        )
