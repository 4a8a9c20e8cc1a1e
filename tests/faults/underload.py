"""What the bomb and hanging-webhook fault tests share: a real `legato serve` on its own SQLite file with
the load's service and workflow registered, a /healthz sampler, and the verdict on the load's runs
(lost, duplicated) read from the file once the server has stopped."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from tests.faults.load import WORKFLOW, Load, until
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService


def sql(path: Path, statement: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=20)
    try:
        return conn.execute(statement, args).fetchall()
    finally:
        conn.close()


def count(path: Path, statement: str, *args: object) -> int:
    value = sql(path, statement, *args)[0][0]
    assert isinstance(value, int), value
    return value


@dataclass
class Health:
    """/healthz answered in a loop from its own connection; the time each answer took."""

    url: str
    every: float = 0.02
    took: list[float] = field(default_factory=list)
    failed: int = 0
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            while True:
                sent = time.monotonic()
                try:
                    ok = (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.took.append(time.monotonic() - sent)
                self.failed += not ok
                await asyncio.sleep(self.every)

    def start(self) -> None:
        self.took, self.failed = [], 0
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    def p99(self) -> float:
        ordered = sorted(self.took)
        assert ordered, "no /healthz answer sampled"
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    async def baseline(self, seconds: float = 1.0) -> float:
        """p99 of /healthz with nothing else going on."""
        self.start()
        await asyncio.sleep(seconds)
        await self.stop()
        return self.p99()


@dataclass
class Verdict:
    acknowledged: int
    lost: int
    duplicated: int


@asynccontextmanager
async def serving(
    tmp_path: Path, service: LoopbackService, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[ServerProcess, Path]]:
    """A `legato serve` on its own SQLite file, the load's service and workflow registered."""
    path = tmp_path / "legato.db"
    server = start_server(tmp_path, "--grace", "1", *args, db=f"sqlite:///{path}", env=env)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            r = await http.post(
                "/api/services", json={"name": "svc", "base_url": service.url, "timeout": 5}
            )
            assert r.status_code == 201, r.text
            assert (await http.post("/api/workflows", json=WORKFLOW)).status_code in (200, 201)
        yield server, path
    finally:
        if server.proc.poll() is None:
            server.stop()


async def load_verdict(path: Path, load: Load, service: LoopbackService) -> Verdict:
    """Once the load has stopped: wait for its runs to end, then count those not succeeded with
    the right output (lost) and the steps whose service was called more than once."""

    async def ended() -> bool:
        active = await asyncio.to_thread(
            count,
            path,
            "SELECT count(*) FROM runs WHERE workflow = 'fault' "
            "AND status IN ('pending', 'running', 'waiting')",
        )
        return active == 0

    await until(ended, 30, 0.2)
    acknowledged = load.acknowledged()
    rows = {
        str(r[0]): r
        for r in sql(path, "SELECT id, status, input, output FROM runs WHERE workflow = 'fault'")
    }
    lost = [
        i
        for i in acknowledged
        if i not in rows
        or rows[i][1] != "succeeded"
        or orjson.loads(str(rows[i][3])) != orjson.loads(str(rows[i][2]))["n"] + 1
    ]
    calls = Counter(k for k in service.keys("/echo") if k)
    duplicated = [k for k, n in calls.items() if n > 1]
    return Verdict(len(acknowledged), len(lost), len(duplicated))
