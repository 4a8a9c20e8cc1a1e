"""SIGTERM drains a real server: no new step starts, steps under way finish or are left resumable,
the process exits within its grace period, and the next start finishes every run."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService

# uvicorn re-raises the stop signal once shut down, as a process that dies of it would.
DRAINED = (0, -signal.SIGTERM)


def nap_then_echo(delay: float) -> dict[str, object]:
    return {
        "name": "nap",
        "steps": {
            "nap": {"http": {"service": "svc", "path": "/slow", "query": {"delay": str(delay)}}},
            "after": {"depends_on": "nap", "http": {"service": "svc", "path": "/echo"}},
        },
    }


async def _start_naps(server: ServerProcess, service: LoopbackService, delay: float) -> list[str]:
    async with AsyncClient(server.url) as api:
        await api.add_service({"name": "svc", "base_url": service.url}, replace=True)
        await api.apply(nap_then_echo(delay))
        ids = [(await api.start("nap", {}))["id"] for _ in range(5)]
    while service.in_flight < 5:
        await asyncio.sleep(0.01)
    return ids


async def _finish_after_restart(tmp_path: Path, db: str, ids: list[str]) -> list[dict[str, object]]:
    again = start_server(tmp_path, db=db, name="again")
    try:
        async with AsyncClient(again.url) as api:
            return [await api.wait(i, timeout=20) for i in ids]
    finally:
        again.stop()


async def test_steps_under_way_finish_within_the_grace_period_and_nothing_new_starts(
    tmp_path: Path, service: LoopbackService
) -> None:
    server = start_server(tmp_path, "--grace", "10")
    ids = await _start_naps(server, service, 1.0)
    began = time.monotonic()
    code = await asyncio.to_thread(server.stop, signal.SIGTERM)
    took = time.monotonic() - began
    assert code in DRAINED, server.output()
    assert 0.5 < took < 5, took  # waited for the naps (1 s), not for the whole grace period
    assert len(service.seen("/slow")) == 5
    assert service.seen("/echo") == []  # drained: the next steps were not started
    runs = await _finish_after_restart(tmp_path, server.db, ids)
    assert [r["status"] for r in runs] == ["succeeded"] * 5
    assert len(service.seen("/slow")) == 5  # the naps had finished and were committed: not redone
    assert len(service.seen("/echo")) == 5


async def test_steps_longer_than_the_grace_period_are_left_to_resume_with_the_same_key(
    tmp_path: Path, service: LoopbackService
) -> None:
    server = start_server(tmp_path, "--grace", "1")
    ids = await _start_naps(server, service, 4.0)
    began = time.monotonic()
    code = await asyncio.to_thread(server.stop, signal.SIGTERM)
    took = time.monotonic() - began
    assert code in DRAINED, server.output()
    assert took < 3.5, took  # the grace period, not the 4 s naps
    first_keys = sorted(service.keys("/slow"))
    runs = await _finish_after_restart(tmp_path, server.db, ids)
    assert [r["status"] for r in runs] == ["succeeded"] * 5
    assert sorted(service.keys("/slow")) == sorted(first_keys * 2)  # each redone once, same key
    assert len(service.seen("/echo")) == 5


async def test_a_blocking_python_step_cannot_hold_the_process_past_its_grace(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, "--grace", "1", "--python-module", "tests.integration.blocking")
    async with AsyncClient(server.url) as api:
        await api.apply(
            {
                "name": "blocked",
                "steps": {
                    "nap": {
                        "python": {
                            "function": "tests.integration.blocking:nap",
                            "args": {"seconds": 60},
                        }
                    }
                },
            }
        )
        run = await api.start("blocked", {}, wait=0.5)
        assert run["steps"][0]["status"] == "running"
    began = time.monotonic()
    code = await asyncio.to_thread(server.stop, signal.SIGINT)  # Ctrl-C
    took = time.monotonic() - began
    assert code == 130, server.output()
    assert took < 4, took  # the 1 s grace, not the 60 s nap
    assert "1 unfinished run(s) resume on the next start" in server.output()
    assert "Traceback" not in server.output()
