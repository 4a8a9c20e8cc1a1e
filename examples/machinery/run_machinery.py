"""machinery's README example, end to end against a running Legato server.

    legato serve &                                   # or any server: --url / LEGATO_URL
    python examples/machinery/run_machinery.py

It serves the three services (examples/machinery/sample_services.py) on --port, registers the service files
as they are (`legato service add --file service-upper.json ...` does the same), applies the
workflow, sends the event and waits for the run's output: `POST /e/process-text?wait=10`. Then it
shows the mistake Legato refuses at registration: a space-counter that declares `message`, not the
`space_count` the workflow promises.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from legato.client import ApiError, AsyncClient
from legato.formats.loader import load_services

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import sample_services  # noqa: E402  (this folder's sample_services.py)

FILED_PORT = 5000  # the port the service files name


def at_port(service: dict[str, Any], port: int) -> dict[str, Any]:
    """The service as filed, listening on `port` instead (a free one in the tests)."""
    address = service["address"].replace(f":{FILED_PORT}/", f":{port}/")
    return {**service, "address": address}


async def main(url: str, port: int) -> int:
    runner, port = await sample_services.start(port)
    try:
        async with AsyncClient(url, os.environ.get("LEGATO_API_TOKEN")) as legato:
            for name in ("upper", "reverse", "space-counter"):
                for service in load_services((HERE / f"service-{name}.json").read_bytes()):
                    await legato.add_service(at_port(service, port), replace=True)
            record = await legato.apply(HERE / "workflow-process-text.json")
            print(f"registered {record['name']} v{record['version']}")
            event = json.loads((HERE / "event-text.json").read_text())
            run = await legato.send_event("process-text", event["data"], wait=10)
            print(f"{run['status']}: {json.dumps(run.get('output'))}")

            broken = json.loads((HERE / "service-space-counter.json").read_text())
            broken["outputs"][0]["name"] = "message"
            await legato.add_service(at_port(broken, port), replace=True)
            try:
                await legato.apply(HERE / "workflow-process-text.json")
            except ApiError as exc:
                print(f"refused: {exc}")
            else:
                print("the broken space-counter was accepted")
                return 1
            good = load_services((HERE / "service-space-counter.json").read_bytes())[0]
            await legato.add_service(at_port(good, port), replace=True)
            return 0 if run["status"] == "succeeded" else 1
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=os.environ.get("LEGATO_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--port", type=int, default=FILED_PORT, help="Where the services listen.")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.url, args.port)))
