"""How fast the web UI's pages load against a full store: a 100-step workflow and 10,000 runs.

Fills a fresh SQLite file with the embedded engine (a 100-step workflow run once against the sample
echo service, and 10,000 one-step runs, a fifth of them failed), starts `legato serve` on it, and
times each page: time to the first byte and to the whole HTML document, over `--repeat` loads (the
first load of a workflow version also lays its graph out: reported as `cold`). With Chromium there
(/usr/bin/chromium), it also loads each page in the browser, scripts and styles included, up to the
load event.

    python bench/ui.py --runs 10000 --steps 100
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from legato import Engine, Service
from throughput import free_port, start_server, start_services

CHROMIUM = Path("/usr/bin/chromium")


def big_workflow(steps: int) -> dict[str, Any]:
    """Lanes of HTTP calls that fan out from one step, cross over now and then, and join at the end."""
    spec: dict[str, Any] = {"start": {"http": {"service": "echo", "json": {"step": 0}}}}
    lanes = 8
    names: list[str] = []
    for i in range(steps - 2):
        lane, depth = i % lanes, i // lanes
        name = f"s{depth}_{lane}"
        deps = [f"s{depth - 1}_{lane}" if depth else "start"]
        if depth and lane and depth % 3 == 0:
            deps.append(f"s{depth - 1}_{lane - 1}")
        spec[name] = {"depends_on": deps, "http": {"service": "echo", "json": {"step": name}}}
        names.append(name)
    spec["join"] = {"depends_on": names[-lanes:], "http": {"service": "echo", "json": {}}}
    return {"name": "big", "steps": spec}


FILL = {
    "name": "fill",
    "inputs": {"i": "integer"},
    "steps": {
        "pick": {
            "branch": {"cases": [{"when": "{{ input.i % 5 == 0 }}", "then": ["refuse"]}]},
        },
        "refuse": {"fail": "refused {{ input.i }}"},
    },
}


async def fill(db: str, base: str, runs: int, steps: int) -> str:
    """Returns the id of the big workflow's run."""
    async with Engine.open(db) as engine:
        await engine.put_service(Service(name="echo", base_url=base + "/echo", concurrency=100))
        await engine.apply(big_workflow(steps))
        await engine.apply(FILL)
        started = time.perf_counter()
        for first in range(0, runs, 500):
            ids = await asyncio.gather(
                *(engine.start_run("fill", {"i": i}) for i in range(first, min(first + 500, runs)))
            )
            await asyncio.gather(*(engine.wait_ended(i, 60) for i in ids))
        big = await engine.start_run("big", {})
        await engine.wait_ended(big, 120)
        state = await engine.get_run(big)
        stored = len(await engine.store.list_runs(limit=runs + 10))
        elapsed = time.perf_counter() - started
        print(f"{stored} runs stored in {elapsed:.1f} s; the {steps}-step run {state.info.status}")
        return big


def time_page(client: httpx.Client, path: str) -> tuple[float, float]:
    started = time.perf_counter()
    with client.stream("GET", path) as answer:
        first = time.perf_counter() - started
        answer.read()
        assert answer.status_code == 200, (path, answer.status_code)
    return first, time.perf_counter() - started


async def browser_times(url: str, pages: dict[str, str], repeat: int) -> dict[str, float]:
    from playwright.async_api import async_playwright

    out: dict[str, float] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = await browser.new_page()
        for label, path in pages.items():
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                await page.goto(url + path, wait_until="load")
                times.append(time.perf_counter() - started)
            out[label] = statistics.median(times)
        await browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        services = start_services(port)
        db = f"sqlite:///{Path(tmp) / 'ui.db'}"
        try:
            big = asyncio.run(fill(db, f"http://127.0.0.1:{port}", args.runs, args.steps))
            proc, url = start_server(db)
        finally:
            services.terminate()
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                first_page = client.get("/runs?workflow=fill").text
                older = re.search(r'href="(/runs[?][^"]+)" id="older"', first_page)
                assert older is not None, "the runs list has no second page"
                pages = {
                    f"workflow page ({args.steps} steps)": "/workflows/big",
                    f"runs list (of {args.runs + 1})": "/runs",
                    "runs list, failed only": "/runs?status=failed",
                    "runs list, a later page": older.group(1).replace("&amp;", "&"),
                    f"run page ({args.steps} steps)": f"/runs/{big}",
                    "workflows list": "/workflows",
                    "services": "/services",
                }
                print(f"{'page':34} {'cold':>8} {'ttfb p50':>9} {'full p50':>9} {'full max':>9}")
                for label, path in pages.items():
                    cold = time_page(client, path)[1]
                    timed = [time_page(client, path) for _ in range(args.repeat)]
                    ttfb = statistics.median(t[0] for t in timed)
                    full = [t[1] for t in timed]
                    print(
                        f"{label:34} {cold * 1000:7.1f}ms {ttfb * 1000:7.1f}ms "
                        f"{statistics.median(full) * 1000:7.1f}ms {max(full) * 1000:7.1f}ms"
                    )
            if CHROMIUM.exists():
                loaded = asyncio.run(browser_times(url, pages, 5))
                print("\nin Chromium, to the load event (median of 5):")
                for label, seconds in loaded.items():
                    print(f"  {label:34} {seconds * 1000:7.1f}ms")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
