"""Run in a subprocess by test_crash.py: start runs, report progress, and wait to be killed."""

from __future__ import annotations

import asyncio
import sys

from legato import Engine, Service

WORKFLOW = {
    "name": "crashy",
    "inputs": [{"name": "n", "type": "integer"}],
    "steps": {
        "one": {
            "http": {
                "service": "svc",
                "path": "/slow",
                "query": {"delay": 0.05},
                "json": {"step": "one", "n": "{{ input.n }}"},
            }
        },
        "two": {
            "depends_on": "one",
            "http": {
                "service": "svc",
                "path": "/slow",
                "query": {"delay": 0.3},
                "json": {"step": "two", "n": "{{ steps.one.output.body.echo.n }}"},
            },
        },
        "three": {
            "depends_on": "two",
            "http": {
                "service": "svc",
                "path": "/slow",
                "query": {"delay": 0.05},
                "json": {"step": "three", "n": "{{ steps.two.output.body.echo.n }}"},
            },
        },
    },
    "output": "{{ steps.three.output.body.echo.n * 10 }}",
}


async def main(db_url: str, base_url: str, runs: int) -> None:
    async with Engine.open(db_url) as engine:
        await engine.put_service(Service(name="svc", base_url=base_url))
        await engine.apply(WORKFLOW)
        for n in range(runs):
            await engine.start_run("crashy", {"n": n})
        print("started", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
