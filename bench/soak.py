"""A steady load against a real `legato serve` for N minutes, printing the server's RSS over time.

Starts the sample services and `legato serve` (a fresh SQLite file, or --db) in their own processes,
registers a two-step workflow, and starts runs at a steady rate (each with ?wait, so a run's whole
life is in the window), listing runs and reading /healthz and /metrics beside them, the way a
dashboard would. Every --every seconds it prints the server's RSS; at the end, the growth per
minute over the second half (after warm-up): a leak shows as a steady slope, a healthy server as
about zero.

    python bench/soak.py --minutes 10 --rate 50

To measure another checkout's code (before a fix), put its `src` first: PYTHONPATH=../main/src.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

WORKFLOW = {
    "name": "soak",
    "inputs": [{"name": "n", "type": "integer"}],
    "steps": {
        "first": {"http": {"service": "echo", "json": {"n": "{{ input.n }}"}}},
        "second": {
            "depends_on": "first",
            "http": {"service": "echo", "json": {"n": "{{ steps.first.output.body.n }}"}},
        },
    },
    "output": "{{ steps.second.output.body.n }}",
}


QUIET = ("--log-level", "warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{what} did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(url: str, rate: float, until: float, counts: dict[str, int]) -> None:
    """Start `rate` runs a second (each waited for), whatever their latency."""
    async with aiohttp.ClientSession(url) as http:

        async def one(n: int) -> None:
            try:
                async with http.post(
                    "/api/workflows/soak/runs?wait=30", json={"input": {"n": n}}
                ) as answer:
                    body = await answer.json()
                    ok = answer.status == 200 and body.get("status") == "succeeded"
                counts["succeeded" if ok else "other"] += 1
                if n % 10 == 0:
                    for path in ("/api/runs?limit=20", "/healthz", "/metrics"):
                        async with http.get(path) as answer:
                            await answer.read()
            except aiohttp.ClientError:
                counts["errors"] += 1

        tasks: set[asyncio.Task[None]] = set()
        n = 0
        began = time.monotonic()
        while time.monotonic() < until:
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)


async def soak(url: str, echo: str, pid: int, minutes: float, rate: float, every: float) -> None:
    async with aiohttp.ClientSession(url) as http:
        await http.put("/api/services/echo", json={"name": "echo", "base_url": echo})
        async with http.post("/api/workflows", json=WORKFLOW) as answer:
            assert answer.status in (200, 201), await answer.text()
    counts = {"succeeded": 0, "other": 0, "errors": 0}
    began = time.monotonic()
    until = began + minutes * 60
    driver = asyncio.create_task(load(url, rate, until, counts))
    samples: list[tuple[float, float]] = []
    print(f"{'minute':>7} {'RSS MB':>8} {'runs ok':>9} {'other':>6} {'errors':>7}", flush=True)
    while not driver.done():
        at = (time.monotonic() - began) / 60
        samples.append((at, rss_mb(pid)))
        print(
            f"{at:>7.2f} {samples[-1][1]:>8.1f} {counts['succeeded']:>9} {counts['other']:>6} "
            f"{counts['errors']:>7}",
            flush=True,
        )
        await asyncio.wait({driver}, timeout=every)
    await driver
    samples.append(((time.monotonic() - began) / 60, rss_mb(pid)))
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1e-9)
    print(
        f"RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB in {samples[-1][0]:.1f} min; "
        f"second half: {slope:+.2f} MB/min; {counts['succeeded']} runs succeeded, "
        f"{counts['other']} other, {counts['errors']} errors"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0, help="runs started per second")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--db", help="a database URL instead of a fresh SQLite file")
    args = parser.parse_args()

    services_port, port = free_port(), free_port()
    echo = f"http://127.0.0.1:{services_port}/echo"
    services = subprocess.Popen(
        [sys.executable, "-m", "legato.samples.services", "--port", str(services_port)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'soak.db'}"
        server = subprocess.Popen(
            [sys.executable, "-m", "legato.cli", "serve", "--port", str(port), "--db", db, *QUIET],
            env={k: v for k, v in os.environ.items() if k != "LEGATO_API_TOKEN"},
        )
        try:
            wait_listening(services_port, services, "the sample services")
            wait_listening(port, server, "legato serve")
            asyncio.run(
                soak(
                    f"http://127.0.0.1:{port}",
                    echo,
                    server.pid,
                    args.minutes,
                    args.rate,
                    args.every,
                )
            )
        finally:
            for proc in (server, services):
                proc.terminate()
                proc.wait()


if __name__ == "__main__":
    main()
