"""The services page's call counts: right, and the same memory whatever the load.

They were kept one tuple per call and pruned only when the page was drawn, so a server under
steady load that nobody looked at grew in a straight line (59 -> 75 MB in 10 minutes).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path

from legato import Engine, Service
from legato.engine.state import Attempt, Decision, StepState
from legato.ui.stats import CallStats, ServiceCalls

WF = {"name": "w", "steps": {"a": {"http": {"service": "svc", "path": "/a"}}}}


def _call(at: float, ok: bool) -> Decision:
    if ok:
        return Decision("r", "w", steps={"a": StepState("a", "succeeded", 1, 1, at - 0.1, at)})
    failed = Attempt("r", "a", 1, "failed", at - 0.1, at, None, None, {"kind": "5xx"})
    return Decision("r", "w", attempts=[failed])


def test_memory_stays_flat_however_many_calls(tmp_path: Path) -> None:
    stats = CallStats(Engine.open(f"sqlite:///{tmp_path / 'x.db'}"))
    now = time.time()
    for i in range(1000):
        stats.observe(_call(now + i * 0.001, True))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(50_000):
        stats.observe(_call(now + 1 + i * 0.001, i % 10 != 0))
    grew = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grew < 100_000, f"50,000 calls kept {grew} bytes"


def test_calls_are_counted_per_service_within_the_window(tmp_path: Path) -> None:
    async def go() -> None:
        async with Engine.open(f"sqlite:///{tmp_path / 'y.db'}") as engine:
            await engine.put_service(Service(name="svc", base_url="http://127.0.0.1:1"))
            await engine.apply(WF)
            stats = CallStats(engine)
            now = time.time()
            stats.observe(_call(now - 20 * 60, False))  # outside the 15 minutes: not counted
            for i in range(7):
                stats.observe(_call(now - 60 + i, i != 3))
            assert await stats.by_service() == {"svc": ServiceCalls(7, 1)}

    asyncio.run(go())
