"""How long a cancel takes to reach a whole run tree: a root with N descendant runs (each waiting for
its own sub-workflow run, as a parked tree does) is written straight into a fresh store, then the root
is cancelled through the engine, and the time until every run is committed as cancelled is printed.

    python bench/cancel_tree.py --runs 100000 --db sqlite --db postgresql://postgres@127.0.0.1/test

With --serve, the tree is cancelled through `POST /api/runs/{root}/cancel` of a `legato serve` while
another process GETs /healthz every 10 ms: it prints the answer, how long it took, and /healthz's p50,
p99 and max meanwhile (target: p99 under 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.integration.treebuild import WORKFLOW, build_tree

from legato import Engine


async def measure(url: str, runs: int, fanout: int) -> None:
    async with Engine.open(url) as engine:
        await engine.apply(WORKFLOW)
        began = time.monotonic()
        root = await build_tree(engine.store, runs, fanout)
        built = time.monotonic() - began
        began = time.monotonic()
        await engine.cancel(root)
        took = time.monotonic() - began
        left = [r for r in await engine.store.list_runs(limit=runs + 10) if r.status != "cancelled"]
        total = len(await engine.store.list_runs(limit=runs + 10))
        kind = url.split(":", 1)[0]
        print(
            f"{kind:10} {total:>7} runs (fan-out {fanout}): built in {built:.1f}s, "
            f"cancelled in {took:.2f}s, {len(left)} not cancelled"
        )


async def serve(url: str, runs: int, fanout: int) -> None:
    """The cancel through the API of a `legato serve`, with /healthz probed meanwhile."""
    import statistics

    import httpx

    from healthz import Probe
    from throughput import start_server

    async with Engine.open(url) as engine:
        await engine.apply(WORKFLOW)
        root = await build_tree(engine.store, runs, fanout)
    server, base = start_server(url)
    try:
        probe = Probe(base)
        await asyncio.sleep(1.0)
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=300) as http:
            answer = await http.post(f"{base}/api/runs/{root}/cancel")
        took = time.monotonic() - began
        probe.phases.append(("cancel", began, time.monotonic()))
        latencies, failed = probe.finish()["cancel"]
    finally:
        server.terminate()
        server.wait()
    p99 = (
        statistics.quantiles(latencies, n=100, method="inclusive")[98]
        if len(latencies) > 1
        else latencies[0]
    )
    kind = url.split(":", 1)[0]
    print(
        f"{kind:10} {runs + 1:>7} runs: POST cancel answered {answer.status_code} in {took:.2f}s; "
        f"/healthz meanwhile {len(latencies)} probes, p50 {statistics.median(latencies) * 1000:.0f}"
        f" ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, {failed} failed"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000, help="descendants of the root")
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument(
        "--db", action="append", help="sqlite (a temporary file) or a postgresql:// URL"
    )
    parser.add_argument("--serve", action="store_true", help="through a `legato serve`'s API")
    args = parser.parse_args()
    measure_one = serve if args.serve else measure
    for db in args.db or ["sqlite"]:
        if db == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                await measure_one(f"sqlite:///{tmp}/tree.db", args.runs, args.fanout)
        else:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            sep = "&" if "?" in db else "?"
            try:
                await measure_one(f"{db}{sep}schema={schema}", args.runs, args.fanout)
            finally:
                import asyncpg

                conn = await asyncpg.connect(db)
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
