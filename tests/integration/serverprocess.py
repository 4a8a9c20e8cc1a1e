"""A real `legato serve` process on a free loopback port, for tests that drive the API over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    db: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_server(
    tmp: Path,
    *args: str,
    db: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "server",
    command: str = "serve",
) -> ServerProcess:
    """Start `legato serve` (or `legato worker`) and return once /healthz answers (or fail with
    its log)."""
    port = free_port()
    db = db or f"sqlite:///{tmp / (name + '.db')}"
    log = tmp / f"{name}-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if k != "LEGATO_API_TOKEN"}
    full_env.update(env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "legato.cli", command, "--port", str(port), "--db", db, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", db, proc, log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"legato serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"legato serve did not answer within 20 s:\n{server.output()}")
