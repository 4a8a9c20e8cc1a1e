"""A bound on the time a client may take to send a request's headers.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no header timeout: a
client that sends half a request line or half its headers, then nothing, holds the connection (and
its memory) for ever, and enough of them exhaust the process's file descriptors (slowloris). This
protocol arms a timer when a connection opens and whenever the bytes of a new request arrive, and
closes the connection if the headers are not complete when it fires. Headers are also bounded in
size (httptools sets no limit): past `MAX_HEADER_BYTES` the answer is 431 and the connection closes.
A body is bounded in time the same way: one not all in `body_timeout` seconds after its headers
(a client trickling a byte every few seconds) is answered 408, if no answer has begun, and closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
MAX_HEADER_BYTES = 64 * 1024
_TOO_LARGE_BODY = (
    b'{"error":"too_large","message":"the request line and headers are over %d bytes",'
    b'"problems":[{"path":"headers","message":"too large"}]}' % MAX_HEADER_BYTES
)
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)

_SLOW_BODY_BODY = (
    b'{"error":"timeout","message":"the request body was not all sent in time",'
    b'"problems":[{"path":"body","message":"not all sent in time"}]}'
)
_SLOW_BODY = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_SLOW_BODY_BODY), _SLOW_BODY_BODY)
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout = DEFAULT_HEADER_TIMEOUT
    body_timeout = DEFAULT_BODY_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_pending = False  # the last request parsed has more body to come

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._header_timer is None:
            self._arm()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        if self._awaiting_headers:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._disarm()
        super().on_headers_complete()
        self._body_pending = True
        if not self.pipeline:  # a queued request's body is not read yet: it waits its turn
            self._arm_body()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm_body()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self.pipeline:  # the next request's headers are timed from its first byte
            self._awaiting_headers = True
        super().on_response_complete()
        if self._body_pending and not self.transport.is_closing():
            self._arm_body()  # a queued request's turn came: its body is read, and timed, now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _arm_body(self) -> None:
        if self._body_timer is None:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_expired)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(_SLOW_BODY)
        if cycle is not None:
            cycle.disconnected = True  # the app's answer, if it gets to one, goes nowhere
        self.transport.close()

    def _expired(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.transport.close()


def protocol(
    header_timeout: float, body_timeout: float = DEFAULT_BODY_TIMEOUT
) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn's `http` setting, with its header and body timeouts."""
    bounds = {"header_timeout": header_timeout, "body_timeout": body_timeout}
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), bounds)
