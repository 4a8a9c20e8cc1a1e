"""Cheap waiting: park N runs on async callbacks in a `legato serve` process, then complete them all.

A service in this process accepts every async call at once (202) and keeps its task token; the runs
then wait. Prints the park rate, the server's RSS per waiting run, the callback latency (a callback's
POST answers once it is committed to the run's inbox), callback to completion (from sending a callback to
its run's end, as committed) and the drain time: from the first callback to the moment no run of them is
still running.

    python bench/waiting.py --runs 10000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
from aiohttp import web

from legato import aio
from throughput import start_server  # the same `legato serve` launcher

WORKFLOW = {
    "name": "parked",
    "inputs": [{"name": "n", "type": "integer"}],
    "steps": {
        "job": {
            "http": {
                "service": "worker",
                "path": "/jobs",
                "async": True,
                "json": {"n": "{{ input.n }}"},
            }
        }
    },
    "output": "{{ steps.job.output }}",
}


async def bench(runs: int, concurrency: int, db: str) -> None:
    tokens: list[str] = []
    run_of: dict[str, str] = {}  # token -> run id
    all_parked = asyncio.Event()

    async def accept(request: web.Request) -> web.Response:
        token = request.headers["Legato-Task-Token"]
        tokens.append(token)
        run_of[token] = request.headers["Idempotency-Key"].split(":", 1)[0]
        if len(tokens) >= runs:
            all_parked.set()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/jobs", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    worker = f"http://127.0.0.1:{runner.addresses[0][1]}"

    server, url = start_server(db)
    proc = psutil.Process(server.pid)
    try:
        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0)) as http:
            await http.put(
                "/api/services/worker",
                json={"name": "worker", "base_url": worker, "concurrency": 1000},
            )
            async with http.post("/api/workflows", json=WORKFLOW) as resp:
                assert resp.status in (200, 201), await resp.text()
            await asyncio.sleep(0.5)
            rss_before = proc.memory_info().rss

            async def start(n: int) -> None:
                async with http.post(
                    "/api/workflows/parked/runs", data=orjson.dumps({"input": {"n": n}})
                ) as resp:
                    assert resp.status == 202, await resp.text()

            queue = iter(range(runs))

            async def starter() -> None:
                for n in queue:
                    await start(n)

            began = time.perf_counter()
            await asyncio.gather(*(starter() for _ in range(concurrency)))
            await asyncio.wait_for(all_parked.wait(), 120)
            park_seconds = time.perf_counter() - began
            await asyncio.sleep(1.0)  # let the last commits settle
            gc.collect()
            rss_parked = proc.memory_info().rss
            latencies: list[float] = []
            sent: dict[str, float] = {}  # run id -> when its callback was sent (wall clock)
            pending = iter(list(tokens))

            async def complete() -> None:
                for token in pending:
                    sent[run_of[token]] = time.time()
                    t0 = time.perf_counter()
                    async with http.post(
                        f"/api/callbacks/{token}", data=b'{"output": {"ok": true}}'
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                    latencies.append(time.perf_counter() - t0)

            async def still_running() -> list[Any]:
                params = {"workflow": "parked", "status": "running", "limit": "1"}
                async with http.get("/api/runs", params=params) as resp:
                    found: list[Any] = (await resp.json())["runs"]
                    return found

            began = time.perf_counter()
            await asyncio.gather(*(complete() for _ in range(concurrency)))
            accept_seconds = time.perf_counter() - began
            deadline = time.monotonic() + 60
            left = await still_running()
            while left and time.monotonic() < deadline:  # the server is another process: look
                await asyncio.sleep(0.02)
                left = await still_running()
            drain_seconds = time.perf_counter() - began
            # Callback to completion: from sending the callback to the run's end as committed
            # (the server's clock is this machine's clock).
            completion: list[float] = []
            cursor = None
            while True:
                params = {
                    "workflow": "parked",
                    "limit": "500",
                    **({"cursor": cursor} if cursor else {}),
                }
                async with http.get("/api/runs", params=params) as resp:
                    page = await resp.json()
                for run in page["runs"]:
                    if run["finished_at"] and run["id"] in sent:
                        ended = datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
                        completion.append(ended.timestamp() - sent[run["id"]])
                cursor = page["next_cursor"]
                if not cursor:
                    break
    finally:
        server.terminate()
        server.wait()
        await runner.cleanup()
    latencies.sort()
    completion.sort()
    per_run = (rss_parked - rss_before) / runs
    print(f"runs parked on callbacks: {runs}, client concurrency {concurrency}")
    print(f"park rate:                {runs / park_seconds:,.0f} runs/s ({park_seconds:.1f} s)")
    print(
        f"server RSS:               {rss_before / 2**20:.0f} MB idle, {rss_parked / 2**20:.0f} MB with {runs} waiting"
    )
    print(f"RSS per waiting run:      {per_run / 1024:.2f} KB")
    print(
        f"callback accepted:        p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms "
        f"(all {runs} in {accept_seconds:.2f} s)"
    )
    print(
        f"callback to completion:   p50 {statistics.median(completion) * 1000:.1f} ms, "
        f"p99 {completion[int(len(completion) * 0.99)] * 1000:.1f} ms"
    )
    print(
        f"drain:                    {runs} completed in {drain_seconds:.2f} s ({runs / drain_seconds:,.0f}/s)"
    )
    print(f"runs still running:       {len(left)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        aio.run(bench(args.runs, args.concurrency, f"sqlite:///{Path(tmp) / 'waiting.db'}"))


if __name__ == "__main__":
    main()
