"""Template bombs under load: a huge power, a 100 MB repeat in an http step's json and a huge range,
posted and run several times each. Each is refused at registration (422) or fails its step with kind
`limit`; nothing big is stored or sent; /healthz keeps answering fast and the normal load loses
nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.load import Load, describe, record, until
from tests.faults.underload import Health, load_verdict, serving, sql
from tests.integration.testservice import LoopbackService

BOMBING = 3.0  # seconds of bombs started in turn


def bomb(name: str, template: str, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    http = {"service": "svc", "path": "/echo", "json": {"v": template}}
    return {"name": name, "inputs": inputs or {}, "steps": {"boom": {"http": http}}}


BOMBS = [
    (bomb("bomb-pow", "{{ (10 ** input.n) % 7 }}", {"n": "integer"}), {"n": 10_000_000}),
    (bomb("bomb-repeat", "{{ 'a' * 100000000 }}"), {}),
    (bomb("bomb-range", "{{ range(100000000) | list | length }}"), {}),
    (bomb("bomb-loop", "{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}"), {}),
]

pytestmark = pytest.mark.slow


async def test_template_bombs_under_load(service: LoopbackService, tmp_path: Path) -> None:
    async with serving(tmp_path, service) as (server, path):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            health = Health(server.url)
            idle = await health.baseline()
            load = Load(server.url)
            load.start()
            await asyncio.sleep(0.5)
            health.start()
            began = time.monotonic()
            registered: dict[str, int] = {}
            runnable: list[tuple[str, dict[str, Any]]] = []
            for doc, run_input in BOMBS:
                r = await http.post("/api/workflows", json=doc)
                registered[doc["name"]] = r.status_code
                assert r.status_code in (200, 201, 422), r.text
                if r.status_code == 422:
                    assert "limit" in r.text or "too" in r.text, r.text
                else:
                    runnable.append((doc["name"], run_input))
            runs: list[str] = []
            while time.monotonic() - began < BOMBING:  # bombs started in turn, for a while
                for name, run_input in runnable:
                    r = await http.post(f"/api/workflows/{name}/runs", json={"input": run_input})
                    assert r.status_code == 202, r.text
                    runs.append(r.json()["id"])
                await asyncio.sleep(0.05)

            async def ended() -> bool:
                for run in runs:
                    got = (await http.get(f"/api/runs/{run}")).json()
                    if got["status"] not in ("failed", "succeeded", "cancelled"):
                        return False
                return True

            took = await until(ended, 30, 0.1)
            await health.stop()
            bomb_p99, slowest = health.p99(), max(health.took)
            bomb_health_failed = health.failed
            outcomes = [(await http.get(f"/api/runs/{run}")).json() for run in runs]
            await load.stop()
            load_s = time.monotonic() - began
        verdict = await load_verdict(path, load, service)
        # What the store holds of the bombs' steps: their requests and errors, small.
        widest = sql(
            path,
            "SELECT max(length(coalesce(request, '')) + length(coalesce(error, ''))) FROM steps "
            "WHERE run_id IN (SELECT id FROM runs WHERE workflow LIKE 'bomb-%')",
        )[0][0]
        size = path.stat().st_size + sum(
            p.stat().st_size for p in path.parent.glob(path.name + "-*")
        )
    kinds = []
    for run in outcomes:
        assert run["status"] == "failed", run
        step = next(s for s in run["steps"] if s["name"] == "boom")
        assert step["status"] == "failed", step
        kinds.append(step["error"]["kind"])
    sent = max((len(orjson.dumps(r.json)) for r in service.seen("/echo")), default=0)
    record(
        {
            "fault": (
                "template bombs: `(10 ** input.n) % 7` (n = 10,000,000), `'a' * 100000000` in an "
                f"http step's json, `range(100000000)`, a 10 MB loop; started in turn for {BOMBING:.0f} s"
            ),
            "load": f"{load.clients} clients starting 2-step runs in a loop",
            "acknowledged": verdict.acknowledged,
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "answers": describe(load.statuses()),
            "detail": (
                f"registration {', '.join(f'{k} {v}' for k, v in registered.items())}; "
                f"{len(kinds)} bomb runs, all failed, kinds {sorted(set(kinds))}; /healthz p99 "
                f"{bomb_p99 * 1000:.0f} ms (idle {idle * 1000:.0f} ms, slowest {slowest:.2f} s); "
                f"largest stored step {widest} bytes, database {size // 1024} KiB, largest call "
                f"sent {sent} bytes"
            ),
            "recovery_s": round(took, 2),
            "recovery": f"the last bomb run failed {took:.2f} s after the last start",
            "healthz_p99_ms": round(bomb_p99 * 1000, 1),
            "healthz_idle_p99_ms": round(idle * 1000, 1),
            "load_s": round(load_s, 1),
        }
    )
    assert runs and set(kinds) == {"limit"}, kinds
    assert int(str(widest)) < 64 * 1024, widest
    assert size < 20 * 1024 * 1024, size
    assert sent < 1024 * 1024, sent
    assert bomb_p99 < 1.0 and bomb_health_failed == 0, (bomb_p99, bomb_health_failed)
    assert verdict.lost == 0 and verdict.duplicated == 0, verdict
    assert set(load.statuses()) == {202}, describe(load.statuses())
