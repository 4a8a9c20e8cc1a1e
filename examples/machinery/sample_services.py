"""machinery's three example microservices on one local port: POST /upper, /reverse, /space-counter.

`upper` and `reverse` are Legato's sample services; `space-counter` answers `space_count`, the name
machinery's workflow expects. Run: `python examples/machinery/sample_services.py [--port 5000]`.
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

from legato.samples.services import reverse, upper


async def space_counter(request: web.Request) -> web.Response:
    data = orjson.loads(await request.read() or b"{}")
    count = str(data.get("message", "")).count(" ") if isinstance(data, dict) else 0
    return web.json_response({"space_count": count}, dumps=lambda v: orjson.dumps(v).decode())


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/upper", upper)
    app.router.add_post("/reverse", reverse)
    app.router.add_post("/space-counter", space_counter)
    return app


async def start(port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve them in this event loop on 127.0.0.1; return the runner and the port."""
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, int(runner.addresses[0][1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5000)
    web.run_app(build_app(), host="127.0.0.1", port=parser.parse_args().port, print=None)
