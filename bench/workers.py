"""Scale-out: the three-step workload through one API process, with 1, 2 and 4 `legato worker`
processes on PostgreSQL, and one `legato serve` on SQLite for comparison.

Each setting gets a fresh database (a new PostgreSQL schema, dropped after; a new SQLite file). The
client starts each run with POST /api/workflows/three-steps/runs?wait=60 at the given concurrency; the
latency is from that request to the answer with the finished run. cpu/run adds up the Legato processes.

    python bench/workers.py --runs 3000 --concurrency 64 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import asyncpg

from legato import aio
from throughput import drive_api, free_port, start_server, start_services

POSTGRES = os.environ.get("LEGATO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def bench_workers(base: str, runs: int, concurrency: int, workers: int) -> dict[str, float]:
    schema = f"legato_bench_{uuid.uuid4().hex[:8]}"
    db = f"{POSTGRES}?schema={schema}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        api, url = start_server(db, "--api-only")
        procs.append(api)
        for _ in range(workers):
            procs.append(start_server(db, command="worker")[0])
        return await drive_api(url, base, runs, concurrency, [p.pid for p in procs])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def bench_sqlite(base: str, runs: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            return await drive_api(url, base, runs, concurrency, [server.pid])
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    port = free_port()
    services = start_services(port)
    base = f"http://127.0.0.1:{port}"
    try:
        print(
            f"{'setting':<26} {'runs/s':>8} {'steps/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'cpu/run':>8}  (runs={args.runs}, concurrency={args.concurrency}, "
            f"cpus={os.cpu_count()})"
        )
        settings: list[tuple[str, int]] = [("sqlite: 1 serve", 0)]
        settings += [(f"postgresql: api + {n} worker(s)", n) for n in args.workers]
        for label, n in settings:
            if n == 0:
                r = aio.run(bench_sqlite(base, args.runs, args.concurrency))
            else:
                r = aio.run(bench_workers(base, args.runs, args.concurrency, n))
            print(
                f"{label:<26} {r['runs_per_s']:>8.0f} {r['steps_per_s']:>8.0f} "
                f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['cpu_us_per_run']:>6.0f}us"
            )
    finally:
        services.terminate()
        services.wait()


if __name__ == "__main__":
    main()
