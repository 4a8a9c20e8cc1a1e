"""The fault suite's load: clients starting runs in a loop against a real `legato serve`, recording every
answer (status, Retry-After, time taken), and the figures each fault test reports.

Figures are printed (`pytest -s` shows them) and, when LEGATO_FAULT_FIGURES names a file, appended to it
as JSON lines: bench/faults.py runs the suite that way and prints the table of docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

# Two HTTP steps: each call carries Idempotency-Key `<run>:<step>`, counted at the loopback service.
WORKFLOW = {
    "name": "fault",
    "inputs": {"n": "integer"},
    "steps": {
        "one": {"http": {"service": "svc", "path": "/echo", "json": {"n": "{{ input.n }}"}}},
        "two": {
            "depends_on": "one",
            "http": {
                "service": "svc",
                "path": "/echo",
                "json": {"n": "{{ steps.one.output.body.echo.n + 1 }}"},
            },
        },
    },
    "output": "{{ steps.two.output.body.echo.n }}",
}


@dataclass
class Answer:
    at: float  # monotonic time the request was sent
    took: float
    status: int  # 0: no answer (the client gave up, or the connection failed)
    retry_after: str | None
    run_id: str | None
    body: Any = None


@dataclass
class Load:
    url: str
    clients: int = 4
    pause: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _n: int = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                self._n += 1
                sent = time.monotonic()
                try:
                    r = await http.post("/api/workflows/fault/runs", json={"input": {"n": self._n}})
                except httpx.HTTPError:
                    self.answers.append(Answer(sent, time.monotonic() - sent, 0, None, None))
                    await asyncio.sleep(0.2)
                    continue
                took = time.monotonic() - sent
                body = r.json() if r.headers.get("content-type") == "application/json" else None
                run_id = body["id"] if body and r.status_code in (200, 201, 202) else None
                self.answers.append(
                    Answer(sent, took, r.status_code, r.headers.get("retry-after"), run_id, body)
                )
                await asyncio.sleep(self.pause if r.status_code < 500 else 0.2)

    def acknowledged(self) -> list[str]:
        return [a.run_id for a in self.answers if a.run_id is not None]

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        return Counter(a.status for a in self.answers if since <= a.at < until)


async def until(check: Any, timeout: float, every: float = 0.1) -> float:
    """Wait until `await check()` is true; the seconds it took (fails past `timeout`)."""
    began = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await asyncio.sleep(every)


def describe(statuses: Counter[int]) -> str:
    return ", ".join(f"{n} x {code or 'no answer'}" for code, n in sorted(statuses.items()))


def record(figures: dict[str, Any]) -> None:
    """Print the figures of a fault test, and keep them for bench/faults.py."""
    print("\nfault figures: " + json.dumps(figures))
    target = os.environ.get("LEGATO_FAULT_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps(figures) + "\n")
