"""Throughput of the engine against a plain asyncio loop making the same HTTP calls.

Starts the sample services in their own process, then runs N three-step workflows (each step POSTs to a
service and the next step's body is templated from the previous reply) at a given concurrency, on a fresh
SQLite file; then makes the same 3 calls per run with a plain aiohttp loop and no durability.

Modes: `plain` (the loop), `engine` (the embedded engine, in this process), `api` (a `legato serve`
process; a concurrent client starts each run with POST /api/workflows/three-steps/runs?wait=60 and the
latency is from that request to the answer with the finished run; cpu/run is the server's).

    python bench/throughput.py --runs 5000 --concurrency 64 --modes plain engine api
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson

from legato import Engine, Service, aio

WORKFLOW = {
    "name": "three-steps",
    "inputs": [{"name": "n", "type": "integer"}],
    "steps": {
        "first": {"http": {"service": "echo", "json": {"n": "{{ input.n }}", "step": 1}}},
        "second": {
            "depends_on": "first",
            "http": {
                "service": "echo",
                "json": {"n": "{{ steps.first.output.body.n }}", "step": 2},
            },
        },
        "third": {
            "depends_on": "second",
            "http": {
                "service": "echo",
                "json": {"n": "{{ steps.second.output.body.n }}", "step": 3},
            },
        },
    },
    "output": "{{ steps.third.output.body.n }}",
}


LAST_CPU = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_services(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "legato.samples.services", "--port", str(port)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the sample services did not start")


async def drive(
    runs: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    next_n = iter(range(runs))

    async def worker() -> None:
        for n in next_n:
            t0 = time.perf_counter()
            await one(n)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    global LAST_CPU
    LAST_CPU = time.process_time() - cpu
    return time.perf_counter() - started, latencies


async def bench_engine(base: str, runs: int, concurrency: int, db_url: str) -> dict[str, float]:
    async with Engine.open(db_url) as engine:
        await engine.put_service(Service(name="echo", base_url=base + "/echo", concurrency=1000))
        await engine.apply(WORKFLOW)
        await engine.run("three-steps", {"n": -1}, timeout=10)  # warm up the pool

        async def one(n: int) -> None:
            run_id = await engine.start_run("three-steps", {"n": n})
            await engine.wait_ended(run_id)

        before = dict(engine.stats)
        elapsed, lat = await drive(runs, concurrency, one)
        commits = engine.stats["commits"] - before["commits"]
        transitions = engine.stats["step_transitions"] - before["step_transitions"]
        done = await engine.store.list_runs(status="succeeded", limit=runs + 10)
    assert len(done) >= runs, f"only {len(done)} runs succeeded"
    return summary(elapsed, lat, runs) | {"commits": commits, "state_writes": transitions}


async def bench_plain(base: str, runs: int, concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = base + "/echo"

        async def call(body: dict[str, int]) -> dict[str, int]:
            async with session.post(
                url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 200
                data: dict[str, int] = orjson.loads(await resp.read())
                return data

        async def one(n: int) -> None:
            a = await call({"n": n, "step": 1})
            b = await call({"n": a["n"], "step": 2})
            await call({"n": b["n"], "step": 3})

        await one(-1)
        elapsed, lat = await drive(runs, concurrency, one)
    return summary(elapsed, lat, runs)


def start_server(
    db_url: str, *args: str, command: str = "serve"
) -> tuple[subprocess.Popen[bytes], str]:
    """`legato serve` (or `legato worker`) on a free port, once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "legato.cli",
            command,
            "--port",
            str(port),
            "--db",
            db_url,
            "--log-level",
            "warning",
            *args,
        ],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("legato serve did not start")


async def bench_api(base: str, runs: int, concurrency: int, db_url: str) -> dict[str, float]:
    server, url = start_server(db_url)
    try:
        return await drive_api(url, base, runs, concurrency, [server.pid])
    finally:
        server.terminate()
        server.wait()


async def drive_api(
    url: str, base: str, runs: int, concurrency: int, pids: list[int]
) -> dict[str, float]:
    """Register the service and workflow through the API at `url`, then start and wait for each
    run with one request; cpu/run is that of the processes `pids`."""
    import psutil

    if True:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(url, connector=connector) as http:
            service = {"name": "echo", "base_url": base + "/echo", "concurrency": 1000}
            async with http.put("/api/services/echo", json=service) as resp:
                assert resp.status in (200, 201), await resp.text()
            async with http.post("/api/workflows", json=WORKFLOW) as resp:
                assert resp.status in (200, 201), await resp.text()

            async def one(n: int) -> None:
                body = orjson.dumps({"input": {"n": n}})
                async with http.post(
                    "/api/workflows/three-steps/runs?wait=60",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    run = orjson.loads(await resp.read())
                assert resp.status == 200 and run["status"] == "succeeded", run

            await one(-1)
            procs = [psutil.Process(pid) for pid in pids]
            cpu = sum(sum(p.cpu_times()[:2]) for p in procs)
            elapsed, lat = await drive(runs, concurrency, one)
            global LAST_CPU
            LAST_CPU = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu
    return summary(elapsed, lat, runs)


def summary(elapsed: float, lat: list[float], runs: int) -> dict[str, float]:
    lat.sort()
    return {
        "runs_per_s": runs / elapsed,
        "steps_per_s": 3 * runs / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "seconds": elapsed,
        "cpu_us_per_run": LAST_CPU / runs * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument(
        "--synchronous",
        default="normal",
        choices=["normal", "full"],
        help="SQLite synchronous setting (full also survives power loss)",
    )
    parser.add_argument(
        "--db",
        help="A database URL instead of a fresh SQLite file, e.g. postgresql://postgres@127.0.0.1/test?schema=bench",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=["plain", "engine", "api"], default=["plain", "engine", "api"]
    )
    args = parser.parse_args()

    port = free_port()
    services = start_services(port)
    base = f"http://127.0.0.1:{port}"
    try:
        print(
            f"{'mode':<8} {'conc':>5} {'runs/s':>8} {'steps/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'commits':>8} {'cpu/run':>8}  (runs={args.runs}, db={args.db or 'sqlite synchronous=' + args.synchronous}, "
            f"cpus={os.cpu_count()})"
        )
        for conc in args.concurrency:
            results: dict[str, dict[str, float]] = {}
            for mode in args.modes:
                if mode == "plain":
                    results["plain"] = aio.run(bench_plain(base, args.runs, conc))
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    db = (
                        args.db
                        or f"sqlite:///{Path(tmp) / 'bench.db'}?synchronous={args.synchronous}"
                    )
                    bench = bench_engine if mode == "engine" else bench_api
                    results[mode] = aio.run(bench(base, args.runs, conc, db))
            for mode, r in results.items():
                print(
                    f"{mode:<8} {conc:>5} {r['runs_per_s']:>8.0f} {r['steps_per_s']:>8.0f} "
                    f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r.get('commits', 0):>8.0f} "
                    f"{r['cpu_us_per_run']:>6.0f}us"
                )
            if "plain" in results and "engine" in results:
                ratio = results["engine"]["runs_per_s"] / results["plain"]["runs_per_s"]
                print(f"{'ratio':<8} {conc:>5} {ratio:>8.2f}  engine / plain loop")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the benchmark process: {rss_mb:.0f} MB")
    finally:
        services.terminate()
        services.wait()


if __name__ == "__main__":
    main()
