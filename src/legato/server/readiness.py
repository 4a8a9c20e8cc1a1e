"""`/readyz`: 200 while this process can read and commit to its store (and, for a worker, keep its
leases); 503 with the reasons otherwise. `/healthz` stays a liveness check: a process whose database is
down is alive, and restarting it would not help."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from legato.server.errors import json_response
from legato.store.faults import RETRY_AFTER


async def readyz(request: Request) -> Response:
    engine = request.app.state.legato.engine
    ready, body = engine.health.readiness(engine.draining)
    if ready:
        return json_response(body)
    return json_response(body, 503, {"Retry-After": str(RETRY_AFTER)})
