"""Local stand-ins for the TechMicroServices the two CoWorks examples call, on one aiohttp server.

- `/billing/invoice` (POST): the billing service; an invoice for a positive `amount`, else 400.
- `/mail/send` (POST): the mail service; it records what it was asked to send.
- `/gw/{api_id}/{stage}/...`: an API Gateway in front of a Lambda. Called with
  `InvocationType: Event`, it answers at once and, a moment later, writes the answer
  (`statusCode`, `body`, `isBase64Encoded`) to the S3 bucket and key named by `X-CWS-S3Bucket` and
  `X-CWS-S3Key`, as a CoWorks TechMicroService does.
- `/url/{name}`: a CoWorks directory service, `{url, token}` of the two named services.

Used by examples/coworks/run_coworks.py and the integration tests.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TOKEN = "token"


@dataclass
class Samples:
    s3_endpoint: str
    url: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def api_url(self) -> str:
        """The value for LEGATO_COWORKS_API_URL (or configure(api_url=...))."""
        return self.url + "/gw/{api_id}/{stage}"

    def services(self) -> dict[str, str]:
        return {
            "neorezo-billing_invoice-eshop": f"{self.url}/billing",
            "neorezo-mail": f"{self.url}/mail",
        }

    async def invoice(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.calls.append({"path": request.path, "json": data, "headers": dict(request.headers)})
        if not isinstance(data, dict) or not (data.get("amount") or 0) > 0:
            return web.json_response({"error": "an invoice needs a positive amount"}, status=400)
        number = f"INV-{len(self.calls):04d}"
        return web.json_response({"invoice": number, "amount": data["amount"]}, status=201)

    async def send(self, request: web.Request) -> web.Response:
        self.sent.append(await request.json())
        return web.json_response({"sent": True})

    async def gateway(self, request: web.Request) -> web.Response:
        entry = request.match_info["entry"]
        self.calls.append({"path": request.path, "headers": dict(request.headers)})
        if request.headers.get("Authorization") != TOKEN:
            return web.json_response({"message": "Unauthorized"}, status=401)
        result: dict[str, Any] = {"entry": f"/{entry}", "stage": request.match_info["stage"]}
        if request.can_read_body:
            result["json"] = await request.json()
        if request.headers.get("InvocationType") != "Event":
            return web.json_response(result)
        answer = {"statusCode": 200, "isBase64Encoded": False, "body": json.dumps(result)}
        bucket, key = request.headers["X-CWS-S3Bucket"], request.headers["X-CWS-S3Key"]
        task = asyncio.get_running_loop().create_task(self._store(bucket, key, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=200)

    async def _store(self, bucket: str, key: str, answer: dict[str, Any]) -> None:
        from aiobotocore.session import get_session

        await asyncio.sleep(0.3)  # the Lambda works a little
        session = get_session()
        async with session.create_client(
            "s3", endpoint_url=self.s3_endpoint, region_name="us-east-1"
        ) as client:
            await client.put_object(Bucket=bucket, Key=key, Body=json.dumps(answer).encode())

    async def directory(self, request: web.Request) -> web.Response:
        url = self.services().get(request.match_info["name"])
        if url is None:
            return web.json_response({"error": "unknown service"}, status=404)
        return web.json_response({"url": url, "token": TOKEN})

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/billing/invoice", self.invoice)
        app.router.add_post("/mail/send", self.send)
        app.router.add_route("*", "/gw/{api_id}/{stage}/{entry:.*}", self.gateway)
        app.router.add_get("/url/{name}", self.directory)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        for task in list(self._tasks):
            await task
        if self.runner is not None:
            await self.runner.cleanup()


async def create_bucket(s3_endpoint: str, bucket: str = "coworks-airflow") -> None:
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1") as c:
        await c.create_bucket(Bucket=bucket)
