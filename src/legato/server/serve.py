"""`legato serve`: one process, one event loop, holding the API and the engine.

On SIGTERM (or Ctrl-C) the server drains: the engine starts no new step, requests waiting on runs
answer with what they have, open connections close, and steps under way get the grace period to finish
and commit; whatever is still running after it is left for the next start to resume.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import sys
from types import FrameType

import uvicorn

from legato.engine.runtime import Engine
from legato.errors import LegatoError
from legato.server.app import DEFAULT_MAX_BODY, create_app

log = logging.getLogger("legato.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the engine to drain the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.engine.drain()
        super().handle_exit(sig, frame)

    @property
    def address(self) -> str:
        """The base URL the server listens on (its real port when asked for port 0)."""
        sock = self.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        if sock.family == socket.AF_INET6:
            host = f"[{host}]"
        return f"http://{host}:{port}"


def build_server(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    grace: float = 10.0,
    max_body: int = DEFAULT_MAX_BODY,
    allow_open: bool = False,
    log_level: str = "warning",
    python_modules: tuple[str, ...] = (),
) -> DrainingServer:
    """Refuses an unauthenticated server on a non-loopback address unless `allow_open`."""
    if not token and not is_loopback(host) and not allow_open:
        raise LegatoError(
            f"refusing to serve {host} without a token: set LEGATO_API_TOKEN, bind to "
            "127.0.0.1, or pass --allow-unauthenticated"
        )
    engine = Engine.open(db, python_modules=python_modules)
    app = create_app(engine, token=token, max_body=max_body, grace=grace)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, math.ceil(grace)),
        server_header=False,
    )
    return DrainingServer(config, engine)


async def started(server: DrainingServer, task: asyncio.Task[None]) -> str:
    """Wait until `server` listens (or its task ends in failure) and return its address."""
    while not server.started:
        if task.done():
            task.result()
            raise LegatoError("the server stopped before it started listening")
        await asyncio.sleep(0.02)
    return server.address


def announce(server: DrainingServer, db: str, token: str | None) -> None:
    print(f"Legato {server.address}  database {db}", file=sys.stderr)
    print(f"  API docs  {server.address}/docs", file=sys.stderr)
    if not token:
        where = server.config.host
        scope = "this machine only" if is_loopback(where) else f"anyone who can reach {where}"
        print(f"  no LEGATO_API_TOKEN: the API is open to {scope}", file=sys.stderr)
    sys.stderr.flush()
