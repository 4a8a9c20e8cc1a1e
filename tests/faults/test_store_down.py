"""PostgreSQL stopped under load, then started again: while it is down, starts answer 503 with
Retry-After within 5 s (never 500, never a hang), /readyz says 503 and /healthz 200, and the log says
so in a few lines, not a traceback per request. Once it is back, the process is ready again by itself,
and every run it acknowledged completes: none lost, no succeeded step called twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from tests.faults.load import WORKFLOW, Load, describe, record, until
from tests.faults.ownpg import OwnPostgres
from tests.integration.serverprocess import start_server
from tests.integration.testservice import LoopbackService

OUTAGE = 6.0

pytestmark = pytest.mark.slow


async def test_postgres_stopped_under_load(
    own_postgres: OwnPostgres, service: LoopbackService, tmp_path: Path
) -> None:
    pg = own_postgres
    server = start_server(tmp_path, "--grace", "1", db=pg.url)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            r = await http.post(
                "/api/services", json={"name": "svc", "base_url": service.url, "timeout": 5}
            )
            assert r.status_code == 201, r.text
            assert (await http.post("/api/workflows", json=WORKFLOW)).status_code in (200, 201)

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            async def not_ready() -> bool:
                return (await http.get("/readyz")).status_code == 503

            await until(ready, 10)
            load = Load(server.url)
            load.start()
            await asyncio.sleep(2)
            down = time.monotonic()
            await asyncio.to_thread(pg.stop)
            noticed = await until(not_ready, 5)
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["status"] == "not ready" and r.json()["reasons"], r.text
            assert (await http.get("/healthz")).status_code == 200
            # Other calls that need the store answer the same way.
            others = [
                await http.get("/api/runs"),
                await http.get("/api/workflows"),
                await http.post(
                    "/api/services", json={"name": "other", "base_url": "http://127.0.0.1:9"}
                ),
            ]
            for other in others:
                assert other.status_code == 503, other.text
                assert other.headers["retry-after"] == "5"
                assert other.json()["error"] == "store_unavailable", other.text
            await asyncio.sleep(OUTAGE)
            up = time.monotonic()
            await asyncio.to_thread(pg.start)
            recovery = await until(ready, 30)
            assert recovery < 2.5, recovery  # was up to ~8 s: a commit waited out its backoff
            await asyncio.sleep(2)
            await load.stop()
            after = time.monotonic()
        outage_answers = [a for a in load.answers if down <= a.at < up]
        bad = [(a.status, a.took) for a in load.answers if a.status not in (202, 503)]
        assert not bad, bad[:10]
        assert all(a.retry_after for a in load.answers if a.status == 503)
        slowest = max(a.took for a in outage_answers)
        assert slowest < 5.0, slowest
        assert Counter(a.status for a in outage_answers)[503] > 0
        acknowledged = load.acknowledged()
        conn = await asyncpg.connect(pg.url)
        try:

            async def all_ended() -> bool:
                left = await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE status IN ('pending', 'running', 'waiting')"
                )
                return bool(left == 0)

            try:
                await until(all_ended, 60, 0.2)
            except AssertionError:
                stuck = await conn.fetch(
                    "SELECT r.id, r.status, r.owner, r.lease_until, r.wake_at, "
                    "(SELECT json_agg(json_build_array(s.name, s.status)) FROM steps s "
                    "WHERE s.run_id = r.id) AS steps FROM runs r "
                    "WHERE status IN ('pending', 'running', 'waiting') LIMIT 5"
                )
                raise AssertionError(f"{stuck}\n{server.output()[-6000:]}") from None
            rows = {
                r["id"]: r for r in await conn.fetch("SELECT id, status, input, output FROM runs")
            }
        finally:
            await conn.close()
        lost = [
            i
            for i in acknowledged
            if i not in rows
            or rows[i]["status"] != "succeeded"
            or orjson.loads(rows[i]["output"]) != orjson.loads(rows[i]["input"])["n"] + 1
        ]
        calls = Counter(r.headers["Idempotency-Key"] for r in service.requests)
        duplicated = sorted(k for k, n in calls.items() if n > 1)
        log = server.output()
        tracebacks = log.count("Traceback")
        figures = {
            "fault": f"PostgreSQL stopped for {OUTAGE + noticed:.0f} s, then started",
            "load": f"{load.clients} clients starting 2-step runs in a loop",
            "acknowledged": len(acknowledged),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "unacknowledged_ran": len(set(rows) - set(acknowledged)),
            "answers": describe(load.statuses()),
            "answers_during_outage": describe(Counter(a.status for a in outage_answers)),
            "slowest_answer_s": round(slowest, 2),
            "not_ready_after_s": round(noticed, 2),
            "recovery_s": round(recovery, 2),
            "tracebacks_in_log": tracebacks,
            "log_lines": len(log.splitlines()),
            "load_s": round(after - down, 1),
        }
        record(figures)
        assert not lost, lost[:5]
        assert not duplicated, duplicated[:5]
        assert tracebacks == 0, log[-5000:]
        assert "store unavailable" in log
        assert len(log.splitlines()) < 60, log[-5000:]
    finally:
        if server.proc.poll() is None:
            server.stop()


async def test_a_worker_is_ready_only_while_it_reaches_its_store(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """`legato worker` serves /readyz on its probe port: 503 while PostgreSQL is down (it can
    neither commit nor renew its leases), 200 again once it is back, with /healthz 200 throughout."""
    pg = own_postgres
    worker = start_server(tmp_path, "--lease", "3s", db=pg.url, name="worker", command="worker")
    try:
        async with httpx.AsyncClient(base_url=worker.url, timeout=5) as http:

            async def status() -> int:
                return (await http.get("/readyz")).status_code

            async def ready() -> bool:
                return await status() == 200

            async def not_ready() -> bool:
                return await status() == 503

            await until(ready, 10)
            await asyncio.to_thread(pg.stop)
            await until(not_ready, 5)
            body = (await http.get("/readyz")).json()
            assert body["status"] == "not ready" and body["reasons"], body
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.sleep(2)  # past a renewal (every lease / 3)
            body = (await http.get("/readyz")).json()
            assert "renew" in body["checks"] and not body["checks"]["renew"]["ok"], body
            await asyncio.to_thread(pg.start)
            await until(ready, 30)
        assert worker.output().count("Traceback") == 0, worker.output()[-5000:]
    finally:
        if worker.proc.poll() is None:
            worker.stop()
