"""SIGKILL a server while runs wait on callbacks, timers and events: after a restart each completes
when its answer comes, and none completes twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from legato.client import AsyncClient
from tests.integration.serverprocess import start_server
from tests.integration.testservice import LoopbackService

WAITING = {
    "name": "all-waits",
    "inputs": [{"name": "order", "type": "string"}],
    "steps": {
        "job": {"http": {"service": "svc", "path": "/status/202", "async": True}},
        "nap": {"wait": "2s"},
        "paid": {"listen": {"event": "paid", "key": "{{ input.order }}"}},
        "done": {
            "depends_on": ["job", "nap", "paid"],
            "http": {"service": "svc", "path": "/echo", "json": {"order": "{{ input.order }}"}},
        },
    },
    "output": {"job": "{{ steps.job.output }}", "paid": "{{ steps.paid.output }}"},
}
RUNS = 10


async def test_waiting_runs_survive_sigkill_and_complete_exactly_once(
    tmp_path: Path, service: LoopbackService
) -> None:
    first = start_server(tmp_path, name="first")
    async with AsyncClient(first.url) as api:
        await api.add_service({"name": "svc", "base_url": service.url})
        await api.apply(WAITING)
        began = time.time()
        ids = [(await api.start("all-waits", {"order": f"O-{i}"}))["id"] for i in range(RUNS)]
        for _ in range(500):
            if len(service.seen("/status/202")) >= RUNS:
                break
            await asyncio.sleep(0.01)
        runs = [await api.run(i) for i in ids]
        assert all({s["name"]: s["status"] for s in r["steps"]}["job"] == "waiting" for r in runs)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)

    again = start_server(tmp_path, db=first.db, name="again")
    try:
        tokens = {
            h.headers["Idempotency-Key"].split(":")[0]: h.headers["Legato-Task-Token"]
            for h in service.seen("/status/202")
        }
        async with httpx.AsyncClient(base_url=again.url) as http:
            for i, run_id in enumerate(ids):
                ok = await http.post(f"/api/callbacks/{tokens[run_id]}", json={"output": {"n": i}})
                assert ok.status_code == 200, ok.text
                event = await http.post(
                    "/api/events", json={"type": "paid", "key": f"O-{i}", "data": {"paid": i}}
                )
                assert event.json()["delivered_to"] == [run_id]
            again_cb = await http.post(
                f"/api/callbacks/{tokens[ids[0]]}", json={"output": {"n": 99}}
            )
            assert again_cb.status_code == 409  # completed once, not twice
        async with AsyncClient(again.url) as api:
            done = [await api.wait(i, timeout=15) for i in ids]
        finished = time.time()
    finally:
        again.stop()
    assert [d["status"] for d in done] == ["succeeded"] * RUNS
    assert [d["output"] for d in done] == [
        {"job": {"n": i}, "paid": {"paid": i}} for i in range(RUNS)
    ]
    assert finished - began >= 2.0  # the timers were not shortened by the kill
    naps = [next(s for s in d["steps"] if s["name"] == "nap") for d in done]
    assert all(len(s["attempts"]) == 1 for s in naps)
    assert len(service.seen("/status/202")) == RUNS  # each accepted job was sent once
    assert sorted(s.json["order"] for s in service.seen("/echo")) == sorted(
        f"O-{i}" for i in range(RUNS)
    )
