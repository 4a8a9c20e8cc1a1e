"""A 10,000-step definition posted under load, several times (after one of 2,000 steps, the most
allowed): each answer is a 4xx naming the steps limit, within a bound; /healthz keeps answering fast;
the normal load loses nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.load import Load, describe, record
from tests.faults.underload import Health, load_verdict, serving, sql
from tests.integration.testservice import LoopbackService

STEPS = 10_000
# A chain of http steps, each with a template: under --max-body (1 MiB), so the steps limit answers.
POSTS = 5
ALLOWED = 2_000  # the default --max-steps: a definition this big is accepted, then one bigger


def chain(name: str, steps: int) -> dict[str, Any]:
    return {
        "name": name,
        "steps": {
            f"s{i}": {
                "depends_on": f"s{i - 1}" if i else [],
                "http": {"service": "svc", "path": "/echo", "json": {"i": f"{{{{ {i} }}}}"}},
            }
            for i in range(steps)
        },
    }


BIG = chain("big", STEPS)

pytestmark = pytest.mark.slow


async def test_a_10000_step_definition_posted_under_load(
    service: LoopbackService, tmp_path: Path
) -> None:
    body = orjson.dumps(BIG)
    async with serving(tmp_path, service) as (server, path):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            health = Health(server.url)
            idle = await health.baseline()
            load = Load(server.url)
            load.start()
            await asyncio.sleep(0.5)
            health.start()
            began = time.monotonic()
            sent = time.monotonic()
            r = await http.post("/api/workflows", json=chain("biggest", ALLOWED))
            allowed = (r.status_code, time.monotonic() - sent)
            answers: list[tuple[int, float, Any]] = []
            for _ in range(POSTS):
                sent = time.monotonic()
                r = await http.post(
                    "/api/workflows", content=body, headers={"content-type": "application/json"}
                )
                answers.append((r.status_code, time.monotonic() - sent, r.json()))
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.3)
            await health.stop()
            p99, slowest = health.p99(), max(health.took)
            health_failed = health.failed
            await load.stop()
            load_s = time.monotonic() - began
        verdict = await load_verdict(path, load, service)
        stored = sql(path, "SELECT count(*) FROM workflows WHERE name = 'big'")[0][0]
    longest = max(took for _, took, _ in answers)
    statuses = sorted({status for status, _, _ in answers})
    message = orjson.dumps(answers[0][2]).decode()
    record(
        {
            "fault": (
                f"a {STEPS:,}-step definition ({len(body) // 1024} KiB) posted {POSTS} times "
                "(`--max-steps` 2,000)"
            ),
            "load": f"{load.clients} clients starting 2-step runs in a loop",
            "acknowledged": verdict.acknowledged,
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "answers": describe(load.statuses()),
            "detail": (
                f"each post answered {statuses} naming `steps` and the limit, slowest "
                f"{longest:.2f} s; /healthz p99 {p99 * 1000:.0f} ms (idle {idle * 1000:.0f} ms, "
                f"slowest {slowest:.2f} s); a {ALLOWED:,}-step one answered {allowed[0]} in "
                f"{allowed[1]:.2f} s"
            ),
            "recovery_s": round(longest, 2),
            "recovery": "nothing to recover: the server never stopped answering",
            "healthz_p99_ms": round(p99 * 1000, 1),
            "healthz_idle_p99_ms": round(idle * 1000, 1),
            "load_s": round(load_s, 1),
        }
    )
    assert statuses in ([413], [422]), answers
    assert "steps" in message and "2000" in message, message
    assert longest < 5.0, longest
    assert stored == 0
    assert allowed[0] == 201 and allowed[1] < 5.0, allowed
    assert p99 < 1.0 and health_failed == 0, (p99, health_failed)
    assert verdict.lost == 0 and verdict.duplicated == 0, verdict
    assert set(load.statuses()) == {202}, describe(load.statuses())
