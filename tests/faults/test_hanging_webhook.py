"""A webhook receiver that accepts connections and never answers, for a workflow whose runs fail,
under load (LEGATO_NOTIFY_TIMEOUT=1, LEGATO_NOTIFY_TRIES=2): the failing runs end on time, another
workflow's failure notifications reach a healthy receiver meanwhile, each hanging one is recorded
failed after its tries, and the normal load loses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.faults.load import Load, describe, record, until
from tests.faults.underload import Health, count, load_verdict, serving, sql
from tests.integration.testservice import LoopbackService

TIMEOUT, TRIES = 1.0, 2
PAIRS = 15  # runs of each failing workflow, started in turn

pytestmark = pytest.mark.slow


class Hanging:
    """A TCP server on loopback that reads what it is sent and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


@pytest.fixture
async def hanging() -> AsyncIterator[Hanging]:
    h = Hanging()
    await h.start()
    yield h
    await h.stop()


async def test_a_hanging_webhook_under_load(
    service: LoopbackService, hanging: Hanging, tmp_path: Path
) -> None:
    env = {"LEGATO_NOTIFY_TIMEOUT": str(TIMEOUT), "LEGATO_NOTIFY_TRIES": str(TRIES)}
    healthy = f"{service.url}/echo/hook"
    async with serving(tmp_path, service, env=env) as (server, path):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for name, url in (("fails-hang", hanging.url), ("fails-ok", healthy)):
                doc = {
                    "name": name,
                    "steps": {"f": {"fail": "on purpose"}},
                    "webhooks": [{"url": url, "on": ["failure"]}],
                }
                r = await http.post("/api/workflows", json=doc)
                assert r.status_code in (200, 201), r.text
            health = Health(server.url)
            load = Load(server.url)
            load.start()
            await asyncio.sleep(0.5)
            health.start()
            began = time.monotonic()
            ids: dict[str, list[str]] = {"fails-hang": [], "fails-ok": []}
            for _ in range(PAIRS):
                for name in ids:
                    r = await http.post(f"/api/workflows/{name}/runs", json={})
                    assert r.status_code == 202, r.text
                    ids[name].append(r.json()["id"])
                await asyncio.sleep(0.05)

            async def delivered() -> bool:
                return len(service.seen("/echo/hook")) >= PAIRS

            ok_delivered = await until(delivered, 10, 0.05)
            hang_sql = (
                "SELECT count(*) FROM notifications n JOIN runs r ON r.id = n.run_id "
                "WHERE r.workflow = 'fails-hang'"
            )

            async def given_up() -> bool:
                return await asyncio.to_thread(count, path, hang_sql) == PAIRS

            hang_recorded = await until(given_up, 30, 0.1)
            await health.stop()
            p99 = health.p99()
            health_failed = health.failed
            await load.stop()
            load_s = time.monotonic() - began
            notes = (await http.get(f"/api/runs/{ids['fails-hang'][0]}/notifications")).json()
        verdict = await load_verdict(path, load, service)
        ended = sql(
            path,
            "SELECT workflow, status, max(finished_at - created_at), count(*) FROM runs "
            "WHERE workflow LIKE 'fails-%' GROUP BY workflow, status",
        )
        hang_rows = sql(
            path,
            "SELECT n.ok, n.tries, n.error FROM notifications n JOIN runs r ON r.id = n.run_id "
            "WHERE r.workflow = 'fails-hang'",
        )
        ok_rows = sql(
            path,
            "SELECT n.ok, count(*) FROM notifications n JOIN runs r ON r.id = n.run_id "
            "WHERE r.workflow = 'fails-ok' GROUP BY n.ok",
        )
    slowest_run = max(float(str(row[2])) for row in ended)
    record(
        {
            "fault": (
                f"a webhook receiver that accepts and never answers, for {PAIRS} failing runs "
                f"(`LEGATO_NOTIFY_TIMEOUT={TIMEOUT:g}`, `LEGATO_NOTIFY_TRIES={TRIES}`), {PAIRS} "
                "other failing runs notifying a healthy receiver"
            ),
            "load": f"{load.clients} clients starting 2-step runs in a loop",
            "acknowledged": verdict.acknowledged,
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "answers": describe(load.statuses()),
            "detail": (
                f"every failing run ended (finished_at - created_at) within {slowest_run * 1000:.0f} "
                f"ms; the healthy receiver had all {PAIRS} within {ok_delivered:.2f} s of the last "
                "start; the "
                "hanging "
                f"one took {hanging.connections} connections, each notification recorded failed "
                f"after {TRIES} tries; /healthz p99 {p99 * 1000:.0f} ms"
            ),
            "recovery_s": round(hang_recorded, 2),
            "recovery": (
                f"the last hanging notification recorded failed {hang_recorded:.1f} s after the "
                "last start"
            ),
            "healthz_p99_ms": round(p99 * 1000, 1),
            "load_s": round(load_s, 1),
        }
    )
    assert {(str(w), str(s)) for w, s, _, _ in ended} == {
        ("fails-hang", "failed"),
        ("fails-ok", "failed"),
    }, ended
    assert slowest_run < 2.0, ended
    assert ok_delivered < TIMEOUT + 2.0, ok_delivered
    assert ok_rows == [(1, PAIRS)], ok_rows
    assert len(hang_rows) == PAIRS and all(
        ok == 0 and tries == TRIES for ok, tries, _ in hang_rows
    ), hang_rows
    note = notes["notifications"][0]
    assert note["ok"] is False and note["tries"] == TRIES and note["error"], note
    assert hanging.connections >= PAIRS * TRIES, hanging.connections
    # Given up after its tries, with the backoff between them: a bound, not a hang.
    assert hang_recorded < TRIES * (TIMEOUT + 1) + 5, hang_recorded
    assert p99 < 1.0 and health_failed == 0, (p99, health_failed)
    assert verdict.lost == 0 and verdict.duplicated == 0, verdict
    assert set(load.statuses()) == {202}, describe(load.statuses())
