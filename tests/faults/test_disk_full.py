"""A SQLite store that fills up under load (`?max_page_count=`, the file's own ceiling), then gets room
again: while it is full, starts answer 503 with Retry-After within 5 s and /readyz 503; nothing is
half-written; once room is freed the server is ready again by itself and every run it acknowledged
completes, none lost, no succeeded step called twice."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from tests.faults.load import WORKFLOW, Load, describe, record, until
from tests.integration.serverprocess import start_server
from tests.integration.testservice import LoopbackService

FULL_FOR = 5.0
ROOM = 12  # pages the server may add past the file's size at its start

pytestmark = pytest.mark.slow


def _sql(path: Path, *statements: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=20)
    try:
        rows: list[tuple[object, ...]] = []
        for statement in statements:
            rows = conn.execute(statement).fetchall()
        return rows
    finally:
        conn.close()


async def test_sqlite_disk_fills_up_under_load(service: LoopbackService, tmp_path: Path) -> None:
    path = tmp_path / "legato.db"
    first = start_server(tmp_path, "--grace", "1", db=f"sqlite:///{path}", name="setup")
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            r = await http.post(
                "/api/services", json={"name": "svc", "base_url": service.url, "timeout": 5}
            )
            assert r.status_code == 201, r.text
            assert (await http.post("/api/workflows", json=WORKFLOW)).status_code in (200, 201)
    finally:
        first.stop()
    # Ballast: pages that dropping the table frees, for the server's file to grow into again.
    _sql(
        path,
        "CREATE TABLE ballast (b BLOB)",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) "
        "INSERT INTO ballast SELECT randomblob(3000) FROM n",
        "PRAGMA wal_checkpoint(TRUNCATE)",
    )
    pages = int(_sql(path, "PRAGMA page_count")[0][0])  # type: ignore[call-overload]
    db = f"sqlite:///{path}?max_page_count={pages + ROOM}"
    server = start_server(tmp_path, "--grace", "1", db=db)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            async def not_ready() -> bool:
                return (await http.get("/readyz")).status_code == 503

            await until(ready, 10)
            load = Load(server.url)
            load.start()
            began = time.monotonic()
            filled = await until(not_ready, 60)
            full_at = time.monotonic()
            r = await http.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert any("full" in reason for reason in r.json()["reasons"]), r.text
            assert (await http.get("/healthz")).status_code == 200
            await asyncio.sleep(FULL_FOR)
            freed = time.monotonic()
            await asyncio.to_thread(_sql, path, "DROP TABLE ballast")
            recovery = await until(ready, 30)
            await asyncio.sleep(2)
            await load.stop()
        full_answers = [a for a in load.answers if full_at <= a.at < freed]
        bad = [(a.status, a.took) for a in load.answers if a.status not in (202, 503)]
        assert not bad, bad[:10]
        assert all(a.retry_after for a in load.answers if a.status == 503)
        slowest = max(a.took for a in load.answers)
        assert slowest < 5.0, slowest
        assert Counter(a.status for a in full_answers)[503] > 0
        acknowledged = load.acknowledged()

        async def all_ended() -> bool:
            rows = await asyncio.to_thread(
                _sql,
                path,
                "SELECT count(*) FROM runs WHERE status IN ('pending', 'running', 'waiting')",
            )
            return rows[0][0] == 0

        await until(all_ended, 60, 0.2)
    finally:
        if server.proc.poll() is None:
            try:
                server.stop()
            except subprocess.TimeoutExpired:  # a full store cannot take the last commit
                server.proc.kill()
                server.proc.wait()
    rows = {str(r[0]): r for r in _sql(path, "SELECT id, status, input, output FROM runs")}
    lost = [
        i
        for i in acknowledged
        if i not in rows
        or rows[i][1] != "succeeded"
        or orjson.loads(str(rows[i][3])) != orjson.loads(str(rows[i][2]))["n"] + 1
    ]
    # Nothing half-written: every run has both its steps, succeeded, and the file is sound.
    steps = _sql(
        path, "SELECT run_id, count(*) FROM steps WHERE status = 'succeeded' GROUP BY run_id"
    )
    partial = [run for run, n in steps if n != 2]
    assert _sql(path, "PRAGMA integrity_check") == [("ok",)]
    calls = Counter(r.headers["Idempotency-Key"] for r in service.requests)
    duplicated = sorted(k for k, n in calls.items() if n > 1)
    log = server.output()
    tracebacks = log.count("Traceback")
    record(
        {
            "fault": f"SQLite file full (max_page_count) for {FULL_FOR + recovery:.0f} s, then room freed",
            "load": f"{load.clients} clients starting 2-step runs in a loop",
            "acknowledged": len(acknowledged),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "unacknowledged_ran": len(set(rows) - set(acknowledged)),
            "answers": describe(load.statuses()),
            "answers_while_full": describe(Counter(a.status for a in full_answers)),
            "slowest_answer_s": round(slowest, 2),
            "full_after_s": round(filled, 1),
            "recovery_s": round(recovery, 2),
            "tracebacks_in_log": tracebacks,
            "log_lines": len(log.splitlines()),
            "load_s": round(time.monotonic() - began, 1),
        }
    )
    assert not lost, lost[:5]
    # A start answered 503 was withdrawn: it never runs later behind its client's back.
    assert set(rows) == set(acknowledged), sorted(set(rows) - set(acknowledged))[:5]
    assert not partial, partial[:5]
    assert not duplicated, duplicated[:5]
    assert tracebacks == 0, log[-5000:]
    assert len(log.splitlines()) < 60, log[-5000:]
