"""Connections that send half a request are closed: uvicorn alone held them open for ever."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.serverprocess import ServerProcess, start_server

HALF = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
FULL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("conn"), "--header-timeout", "1s")
    yield proc
    proc.stop()


def _connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_after(sock: socket.socket, bound: float) -> float:
    """Seconds until the server closes `sock` (reads whatever it sends first); fails past `bound`."""
    began = time.monotonic()
    sock.settimeout(bound)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the server still held the connection after {bound}s")
    return time.monotonic() - began


def test_half_a_header_is_closed_within_the_timeout(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        sock.sendall(HALF)
        assert _closed_after(sock, 6.0) < 6.0


def test_a_connection_that_sends_nothing_is_closed(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        assert _closed_after(sock, 6.0) < 6.0


def test_half_a_header_after_a_kept_alive_request_is_closed(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        sock.sendall(FULL)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(HALF)  # before the keep-alive timeout: it is no longer idle
        assert _closed_after(sock, 6.0) < 6.0


def test_headers_sent_slowly_but_in_time_are_answered(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        for i in range(0, len(FULL), 8):
            sock.sendall(FULL[i : i + 8])
            time.sleep(0.05)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_request_that_waits_longer_than_the_timeout_is_answered(guarded: ServerProcess) -> None:
    """The timeout bounds the headers only: a run started with `wait` still gets its answer."""
    nap = {"name": "nap", "steps": {"w": {"wait": "2s"}}}
    assert httpx.post(guarded.url + "/api/workflows", json=nap).status_code in (200, 201)
    request = (
        b"POST /api/workflows/nap/runs?wait=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    began = time.monotonic()
    with _connect(guarded) as sock:
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - began > 1.5


def test_headers_past_the_size_limit_are_refused(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        # Just past the limit, in one write that the kernel takes whole (the server may answer and
        # close before it has read the rest: a write after that would fail with a broken pipe).
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 70
        sock.sendall(head)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
