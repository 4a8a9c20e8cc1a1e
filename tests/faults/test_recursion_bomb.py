"""Recursion bombs under load: a workflow that starts itself, and two that start each other, stop at
the depth limit (kind `limit`) with a bounded number of runs while /healthz stays fast and the normal
load's runs all succeed; then a bulk cancel (`POST /api/runs:cancel`) stops a wide tree of waiting
runs within 5 s, and nothing under it starts again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.load import Load, describe, record, until
from tests.faults.underload import Health, count, load_verdict, serving, sql
from tests.integration.testservice import LoopbackService

SELF = {"name": "rec-self", "steps": {"me": {"workflow": "rec-self"}}}
PING = {"name": "ping", "steps": {"pong": {"workflow": "pong"}}}
PONG = {"name": "pong", "steps": {"ping": {"workflow": "ping"}}}
DEPTH = 16  # the default --max-depth
WIDE = 50  # a root with WIDE children, each with WIDE children that wait: 1 + 50 + 2,500 runs
LEAF = {"name": "fan-leaf", "steps": {"w": {"wait": "60s"}}}
MID = {"name": "fan-mid", "steps": {f"c{i}": {"workflow": "fan-leaf"} for i in range(WIDE)}}
ROOT = {"name": "fan-root", "steps": {f"c{i}": {"workflow": "fan-mid"} for i in range(WIDE)}}
TREE = 1 + WIDE + WIDE * WIDE

pytestmark = pytest.mark.slow


async def test_recursion_bombs_and_a_bulk_cancel_under_load(
    service: LoopbackService, tmp_path: Path
) -> None:
    async with serving(tmp_path, service) as (server, path):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for doc in (SELF, PING, PONG, LEAF, MID, ROOT):
                r = await http.post("/api/workflows", json=doc)
                assert r.status_code in (200, 201), r.text
            health = Health(server.url)
            idle = await health.baseline()
            load = Load(server.url)
            load.start()
            health.start()
            began = time.monotonic()
            await asyncio.sleep(0.5)
            roots: list[str] = []
            for name in ("rec-self", "ping"):
                r = await http.post(f"/api/workflows/{name}/runs", json={})
                assert r.status_code == 202, r.text
                roots.append(r.json()["id"])

            async def bombs_ended() -> bool:
                for root in roots:
                    if (await http.get(f"/api/runs/{root}")).json()["status"] != "failed":
                        return False
                return True

            stopped = await until(bombs_ended, 30)
            bomb_sql = "SELECT count(*) FROM runs WHERE workflow IN ('rec-self', 'ping', 'pong')"
            bomb_runs = count(path, bomb_sql)
            await asyncio.sleep(1.0)  # long enough for many more levels, were any still going
            assert count(path, bomb_sql) == bomb_runs
            await health.stop()
            bomb_p99 = health.p99()
            bomb_health_failed = health.failed

            # A wide tree of waiting runs, then one bulk cancel by workflow.
            health.start()
            r = await http.post("/api/workflows/fan-root/runs", json={})
            assert r.status_code == 202, r.text
            tree_root = r.json()["id"]
            tree_sql = "SELECT count(*) FROM runs WHERE id = ? OR root = ?"

            async def tree_built() -> bool:
                return await asyncio.to_thread(count, path, tree_sql, tree_root, tree_root) == TREE

            built = await until(tree_built, 30, 0.2)
            await health.stop()
            build_p99, build_slowest = health.p99(), max(health.took)
            health.start()
            cancel_at = time.monotonic()
            r = await http.post("/api/runs:cancel", json={"workflow": "fan-root"})
            answered = time.monotonic() - cancel_at
            assert r.status_code == 200, r.text
            touched = r.json()["count"]
            live_sql = (
                "SELECT count(*) FROM runs WHERE (id = ? OR root = ?) "
                "AND status IN ('pending', 'running', 'waiting')"
            )

            async def tree_stopped() -> bool:
                live = await asyncio.to_thread(count, path, live_sql, tree_root, tree_root)
                return live == 0

            await until(tree_stopped, 10, 0.05)
            cancelled = time.monotonic() - cancel_at
            await asyncio.sleep(1.0)
            tree_after = count(path, tree_sql, tree_root, tree_root)
            await health.stop()
            cancel_p99 = health.p99()
            await asyncio.sleep(0.5)
            await load.stop()
            load_s = time.monotonic() - began
        verdict = await load_verdict(path, load, service)
        limit_errors = [
            str(row[0])
            for row in sql(
                path,
                "SELECT s.error FROM steps s JOIN runs r ON r.id = s.run_id "
                "WHERE r.workflow IN ('rec-self', 'ping', 'pong') AND s.error LIKE '%\"limit\"%'",
            )
        ]
        tree_statuses = sql(
            path,
            "SELECT status, count(*) FROM runs WHERE id = ? OR root = ? GROUP BY status",
            tree_root,
            tree_root,
        )
    figures: dict[str, Any] = {
        "fault": (
            f"recursion bombs: rec-self (A -> A) and ping/pong (A -> B -> A) started once each "
            f"(--max-depth {DEPTH})"
        ),
        "load": f"{load.clients} clients starting 2-step runs in a loop",
        "acknowledged": verdict.acknowledged,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "answers": describe(load.statuses()),
        "detail": (
            f"{bomb_runs} bomb runs in all, both roots failed after {stopped:.1f} s, the deepest step "
            f"kind `limit`; /healthz p99 {bomb_p99 * 1000:.0f} ms (idle {idle * 1000:.0f} ms)"
        ),
        "recovery_s": round(stopped, 2),
        "recovery": f"trees stopped {stopped:.1f} s after the start",
        "healthz_p99_ms": round(bomb_p99 * 1000, 1),
        "healthz_idle_p99_ms": round(idle * 1000, 1),
        "load_s": round(load_s, 1),
    }
    record(figures)
    record(
        {
            "fault": (
                f"bulk cancel `POST /api/runs:cancel` of a tree of {TREE} runs "
                f"({WIDE} children x {WIDE} waiting grandchildren)"
            ),
            "load": f"{load.clients} clients starting 2-step runs in a loop",
            "acknowledged": verdict.acknowledged,
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "answers": describe(load.statuses()),
            "detail": (
                f"tree built in {built:.1f} s (/healthz p99 {build_p99 * 1000:.0f} ms meanwhile); 200 `count: {touched}` in {answered * 1000:.0f} ms; "
                f"/healthz p99 {cancel_p99 * 1000:.0f} ms from the cancel on"
            ),
            "recovery_s": round(cancelled, 2),
            "recovery": f"every run of the tree cancelled {cancelled:.2f} s after the request",
            "healthz_p99_ms": round(cancel_p99 * 1000, 1),
            "healthz_build_p99_ms": round(build_p99 * 1000, 1),
        }
    )
    assert bomb_runs <= 2 * (DEPTH + 1), bomb_runs
    assert limit_errors and all("max_depth" in e for e in limit_errors), limit_errors
    assert len(limit_errors) == 2, limit_errors  # one deepest step per bomb
    assert bomb_p99 < 1.0 and bomb_health_failed == 0, (bomb_p99, bomb_health_failed)
    assert touched == TREE, touched
    assert cancelled < 5.0, cancelled
    assert tree_after == TREE and tree_statuses == [("cancelled", TREE)], tree_statuses
    assert cancel_p99 < 1.0, cancel_p99
    # Starting 2,500 children in a burst slows /healthz (p99 120-170 ms since child starts take
    # turns; 0.3-1.2 s before; in the table); it must keep answering.
    assert build_slowest < 5.0 and health.failed == 0, build_slowest
    assert verdict.lost == 0 and verdict.duplicated == 0, verdict
    assert set(load.statuses()) == {202}, describe(load.statuses())
