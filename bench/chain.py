"""A services-in-order chain of N services (machinery's form): registering it and running it.

One aiohttp service in its own process answers every call on loopback: it merges into the data it
is posted a `hops` count one higher, so the run's output says how many services it went through.
The directory gets N names (s0 .. sN-1) pointing at that one service (registered before the clock
starts; their time is printed apart), and the workflow lists them in order. Timed, in this process
with the embedded engine: `Engine.apply` of the document, the first run end to end (it also builds
the workflow and its templates for the first time) and a second run. cpu is this process's.

    python bench/chain.py --services 100 500 2000
    python bench/chain.py --services 100 --db 'postgresql://postgres@127.0.0.1:5432/test?schema=bench_chain'
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from legato import Engine, Service, aio
from legato.errors import DefinitionError

SERVE = """
import sys
from aiohttp import web

async def hop(request):
    data = await request.json()
    return web.json_response({"hops": int(data.get("hops", 0)) + 1})

app = web.Application()
app.router.add_post("/hop", hop)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def start_service() -> tuple[subprocess.Popen[bytes], str]:
    from throughput import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(port)])
    import socket

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/hop"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the hop service did not start")


def document(name: str, n: int) -> dict[str, Any]:
    return {
        "name": name,
        "services": [f"s{i}" for i in range(n)],
        "inputs": [{"name": "hops", "type": "integer"}],
        "outputs": [{"name": "hops", "type": "integer"}],
        "operations": [],
    }


async def timed(what: Any) -> tuple[Any, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    result = await what
    return result, time.perf_counter() - t0, time.process_time() - c0


async def bench(n: int, db: str, url: str) -> dict[str, Any]:
    name = f"chain-{n}-{os.getpid()}"
    async with Engine.open(db) as engine:
        t0 = time.perf_counter()
        for i in range(n):
            await engine.put_service(Service(name=f"s{i}", base_url=url, concurrency=100))
        directory = time.perf_counter() - t0
        doc = document(name, n)
        try:
            _, apply_s, apply_cpu = await timed(engine.apply(doc))
        except DefinitionError as exc:  # code before issue 13 knew no `operations`
            if "operations" not in str(exc):
                raise
            del doc["operations"]
            print("(this code refuses `operations`: applied without it)")
            _, apply_s, apply_cpu = await timed(engine.apply(doc))
        out: dict[str, Any] = {"directory_s": directory, "apply_s": apply_s, "apply_cpu": apply_cpu}
        for which in ("first", "second"):
            run, secs, cpu = await timed(engine.run(name, {"hops": 0}, timeout=600))
            if run.info.status != "succeeded" or run.info.output != {"hops": n}:
                raise SystemExit(f"{which} run of {n}: {run.info.status} {run.info.output}")
            out[f"{which}_s"], out[f"{which}_cpu"] = secs, cpu
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--services", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument(
        "--db",
        help="A database URL instead of a fresh SQLite file, e.g. "
        "postgresql://postgres@127.0.0.1:5432/test?schema=bench_chain",
    )
    args = parser.parse_args()
    service, url = start_service()
    try:
        print(
            f"{'services':>8} {'directory s':>11} {'apply s':>8} {'cpu':>6} {'1st run s':>9} "
            f"{'cpu':>6} {'2nd run s':>9} {'cpu':>6}  (db={args.db or 'sqlite'}, cpus={os.cpu_count()})"
        )
        for n in args.services:
            with tempfile.TemporaryDirectory() as tmp:
                db = args.db or f"sqlite:///{Path(tmp) / 'chain.db'}"
                r = aio.run(bench(n, db, url))
            print(
                f"{n:>8} {r['directory_s']:>11.2f} {r['apply_s']:>8.2f} {r['apply_cpu']:>6.2f} "
                f"{r['first_s']:>9.2f} {r['first_cpu']:>6.2f} {r['second_s']:>9.2f} "
                f"{r['second_cpu']:>6.2f}",
                flush=True,
            )
    finally:
        service.terminate()
        service.wait()


if __name__ == "__main__":
    main()
