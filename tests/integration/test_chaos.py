"""Chaos: one API-only server and four workers on one PostgreSQL database run 1,000 workflows with a
fan-out; two workers are SIGKILLed mid-flight and one is started again. Every run must end with the
right output; the only calls a service sees twice are those of steps in flight at the kill, each
repeated with its Idempotency-Key; no step that had succeeded runs again."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from pathlib import Path

import asyncpg
import orjson

from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService

RUNS = 1000
FAN = {
    "name": "fan",
    "inputs": {"n": "integer"},
    "steps": {
        "first": {"http": {"service": "svc", "path": "/echo", "json": {"n": "{{ input.n }}"}}},
        "each": {
            "depends_on": "first",
            "map": {
                "over": "{{ [input.n, input.n + 1, input.n + 2] }}",
                "step": {
                    "http": {
                        "service": "svc",
                        "path": "/slow",
                        "query": {"delay": "0.05"},
                        "json": {"item": "{{ item }}"},
                    }
                },
            },
        },
        "last": {
            "depends_on": "each",
            "http": {
                "service": "svc",
                "path": "/echo",
                "json": {"sum": "{{ steps.each.output | map(attribute='body.echo.item') | sum }}"},
            },
        },
    },
    "output": "{{ steps.last.output.body.echo.sum }}",
}


def worker_id(worker: ServerProcess) -> str:
    found = re.search(r"Legato worker ([0-9a-f]{32})", worker.output())
    assert found, worker.output()
    return found.group(1)


async def test_killed_workers_lose_nothing_and_repeat_only_what_was_in_flight(
    shared_db: str, service: LoopbackService, tmp_path: Path
) -> None:
    db = shared_db
    base, name = db.split("?schema=")
    lease = ("--lease", "2s", "--grace", "1")
    api = start_server(tmp_path, "--api-only", *lease, db=db, name="api")
    workers = [
        start_server(tmp_path, *lease, db=db, name=f"worker{i}", command="worker") for i in range(4)
    ]
    conn = await asyncpg.connect(base, server_settings={"search_path": name})
    try:
        async with AsyncClient(api.url, timeout=30) as client:
            await client.add_service({"name": "svc", "base_url": service.url, "timeout": 10})
            await client.apply(FAN)
            gate = asyncio.Semaphore(32)

            async def start(n: int) -> str:
                async with gate:
                    run_id: str = (await client.start("fan", {"n": n}))["id"]
                    return run_id

            starting = asyncio.gather(*(start(n) for n in range(RUNS)))
            # Mid-flight: once a fifth of the calls are made, two workers die without a word.
            deadline = time.monotonic() + 60
            while len(service.requests) < RUNS and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            killed = workers[:2]
            for w in killed:
                w.proc.send_signal(signal.SIGKILL)
            for w in killed:
                w.proc.wait(10)
            # What they held in flight, as committed: the calls that may be repeated.
            in_flight = {
                f"{r['run_id']}:{r['name']}"
                for r in await conn.fetch(
                    "SELECT s.run_id, s.name FROM steps s JOIN runs r ON r.id = s.run_id "
                    "WHERE s.status = 'running' AND r.owner = ANY($1::text[])",
                    [worker_id(w) for w in killed],
                )
            }
            workers.append(
                start_server(tmp_path, *lease, db=db, name="worker-again", command="worker")
            )
            ids = await starting
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                left = await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'failed', "
                    "'cancelled')"
                )
                if left == 0:
                    break
                await asyncio.sleep(0.2)
        rows = await conn.fetch("SELECT id, status, output, input FROM runs")
        by_id = {r["id"]: r for r in rows}
        assert sorted(by_id) == sorted(ids)
        wrong = [
            (r["id"], r["status"], r["output"])
            for r in rows
            if r["status"] != "succeeded"
            or orjson.loads(r["output"]) != 3 * orjson.loads(r["input"])["n"] + 3
        ]
        assert not wrong, wrong[:5]
        calls = Counter(r.headers["Idempotency-Key"] for r in service.requests)
        repeated = {key for key, count in calls.items() if count > 1}
        assert repeated <= in_flight, sorted(repeated - in_flight)[:5]
        assert all(calls[key] <= 2 for key in repeated)
        assert len(calls) == RUNS * 5  # every step of every run was called
        print(
            f"\nchaos: {RUNS} runs, {sum(calls.values())} calls, {len(in_flight)} steps in flight "
            f"at the kill, {len(repeated)} repeated"
        )
    finally:
        await conn.close()
        for w in [api, *workers]:
            if w.proc.poll() is None:
                w.stop()
