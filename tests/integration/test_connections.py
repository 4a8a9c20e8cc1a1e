"""Connections that send half a request, or a body a byte at a time, are closed: uvicorn alone held
them open for ever. A client that leaves mid-body costs no traceback."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from legato.cli import main
from tests.integration.serverprocess import ServerProcess, start_server

HALF = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
FULL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("conn"), "--header-timeout", "1s", "--body-timeout", "2s"
    )
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


BODY_HEAD = (
    b"POST /api/workflows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n"
)


def test_a_body_sent_too_slowly_is_answered_408_and_closed(guarded: ServerProcess) -> None:
    with _connect(guarded) as sock:
        sock.sendall(BODY_HEAD % 1000 + b"{")
        began = time.monotonic()
        answer = b""
        sock.settimeout(8.0)
        with contextlib.suppress(OSError):
            while time.monotonic() - began < 8.0:
                sock.sendall(b" ")  # a byte now and then: each resets no timer
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert time.monotonic() - began < 6.0
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"path":"body"' in answer


def test_a_pipelined_request_whose_body_comes_too_slowly_is_closed(guarded: ServerProcess) -> None:
    """A request queued behind another in one packet gets its body timed once its turn comes."""
    with _connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + BODY_HEAD % 100000 + b"{")
        began = time.monotonic()
        sock.settimeout(1.0)
        closed = False
        with contextlib.suppress(OSError):
            while time.monotonic() - began < 8.0:
                sock.sendall(b" ")  # a byte a second: the body never completes
                try:
                    if not sock.recv(65536):
                        closed = True
                        break
                except TimeoutError:
                    pass
        assert closed, "the server still held the connection after 8 s"
        assert time.monotonic() - began < 6.0


def test_a_body_sent_slowly_but_in_time_is_answered(guarded: ServerProcess) -> None:
    doc = b'{"name": "slow-but-fine", "steps": {"w": {"wait": "1s"}}}'
    with _connect(guarded) as sock:
        sock.sendall(BODY_HEAD % len(doc))
        for i in range(0, len(doc), 8):
            sock.sendall(doc[i : i + 8])
            time.sleep(0.1)
        assert sock.recv(65536).split(b" ")[1] in (b"200", b"201")


def test_a_client_that_leaves_mid_body_logs_no_traceback(guarded: ServerProcess) -> None:
    for _ in range(5):
        with _connect(guarded) as sock:
            sock.sendall(BODY_HEAD % 1000 + b"{")
    assert httpx.get(guarded.url + "/healthz").status_code == 200
    time.sleep(0.5)
    log = guarded.output()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


@pytest.mark.parametrize("option", ["--header-timeout", "--body-timeout"])
@pytest.mark.parametrize("value", ["0s", "0ms", "-1s"])
def test_a_timeout_of_zero_or_less_is_refused(option: str, value: str) -> None:
    result = CliRunner().invoke(main, ["serve", option, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    if not value.startswith("-"):  # a negative one is not a duration at all
        assert "must be longer than 0s" in result.output
