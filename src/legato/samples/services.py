"""Small real HTTP services on loopback, standing in for a team's technical microservices.

Text services (`upper`, `reverse`, `space-counter`) and an order domain (`stock`, `billing`, `invoicing`,
`mail`). Each lives under its own path prefix of one aiohttp server, so one port hosts them all.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import orjson
from aiohttp import web

from legato.model.service import Service

_ids = itertools.count(1)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


async def upper(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json({"message": str(data.get("message", "")).upper()})


async def reverse(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json({"message": str(data.get("message", ""))[::-1]})


async def space_counter(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json({"spaces": str(data.get("message", "")).count(" ")})


async def reserve(request: web.Request) -> web.Response:
    data = await _body(request)
    items = data.get("items", [])
    if not isinstance(items, list):
        return _json({"error": "items must be a list"}, 400)
    return _json({"reservation": f"R{next(_ids)}", "items": len(items)})


async def charge(request: web.Request) -> web.Response:
    data = await _body(request)
    amount = data.get("amount", 0)
    if not isinstance(amount, int | float) or amount <= 0:
        return _json({"error": "amount must be a positive number"}, 422)
    if amount > 10_000:
        return _json({"declined": True, "reason": "over the card limit"}, 402)
    return _json({"payment": f"P{next(_ids)}", "charged": amount})


async def invoice(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json({"invoice": f"INV-{next(_ids)}", "amount": data.get("amount")}, 201)


async def mail(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json({"sent": True, "to": data.get("to")}, 202)


async def echo(request: web.Request) -> web.Response:
    """The benchmark's service: answers at once with what it was sent."""
    return web.Response(body=await request.read() or b"{}", content_type="application/json")


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/upper", upper)
    app.router.add_post("/reverse", reverse)
    app.router.add_post("/space-counter", space_counter)
    app.router.add_post("/stock/reserve", reserve)
    app.router.add_post("/billing/charge", charge)
    app.router.add_post("/invoicing/invoices", invoice)
    app.router.add_post("/mail/send", mail)
    app.router.add_post("/echo", echo)
    return app


def directory(base_url: str) -> list[Service]:
    """The directory entries for the sample services served at `base_url`."""
    base = base_url.rstrip("/")
    return [
        Service.from_dict(
            {
                "name": "upper",
                "address": f"{base}/upper",
                "inputs": [{"name": "message", "type": "string"}],
                "outputs": [{"name": "message", "type": "string"}],
            }
        ),
        Service.from_dict(
            {
                "name": "reverse",
                "address": f"{base}/reverse",
                "inputs": [{"name": "message", "type": "string"}],
                "outputs": [{"name": "message", "type": "string"}],
            }
        ),
        Service.from_dict(
            {
                "name": "space-counter",
                "address": f"{base}/space-counter",
                "outputs": [{"name": "spaces", "type": "integer"}],
            }
        ),
        Service(name="stock", base_url=f"{base}/stock", concurrency=50),
        Service(
            name="billing", base_url=f"{base}/billing", concurrency=20, token="sample-billing-token"
        ),
        Service(name="invoicing", base_url=f"{base}/invoicing"),
        Service(name="mail", base_url=f"{base}/mail"),
    ]


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the sample services in this event loop; return the runner and the base URL."""
    runner = web.AppRunner(build_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve Legato's sample services.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
