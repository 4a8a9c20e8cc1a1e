"""Run in a subprocess by test_kser.py: a worker engine with a short lease, until killed. It imports
the tasks' module first, as `legato worker --dags DIR` imports its files."""

from __future__ import annotations

import asyncio
import sys

import tests.integration.kser_ops  # noqa: F401  (defines the tasks this worker runs)
from legato import Engine


async def main(db_url: str) -> None:
    async with Engine.open(db_url, lease=1.0):
        print("ready", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
