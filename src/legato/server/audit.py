"""`GET /api/audit`: the changes made through the API and the UI, newest first, a page at a time.

Rows are written by `legato.server.guard`; each names the token (never a body, which may hold
secrets).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from legato.model.durations import parse_duration
from legato.server import bodies
from legato.server.access import TOKEN_NAME
from legato.server.errors import ApiError, json_response
from legato.server.payloads import iso
from legato.store.access import AuditRow


def parse_since(text: str, now: float | None = None) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration ago (`1h`, `30m`)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    try:
        ago = parse_duration(text)
    except ValueError:
        raise ValueError(
            f"must be an ISO 8601 time or a duration ago like 1h, not {text!r}"
        ) from None
    return (time.time() if now is None else now) - ago


def entry(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": iso(row.at),
        "token": row.token,
        "method": row.method,
        "path": row.path,
        "target": row.target,
        "status": row.status,
        "client": row.client,
    }


async def list_audit(request: Request) -> Response:
    store = request.app.state.legato.engine.store
    params = request.query_params
    since = None
    if "since" in params:
        try:
            since = parse_since(params["since"])
        except ValueError as exc:
            raise ApiError(400, str(exc), "since") from None
        if not math.isfinite(since):
            raise ApiError(400, "must be a time", "since")
    token = params.get("token")
    if token is not None and not TOKEN_NAME.fullmatch(token):
        raise ApiError(400, "is not a token name", "token")
    limit = bodies.query_int(request, "limit", 100, 1, 1000)
    cursor = bodies.query_int(request, "cursor", 0, 1, 2**62) if "cursor" in params else None
    rows = await store.list_audit(since, token, cursor, limit + 1)
    page = rows[:limit]
    next_cursor = str(page[-1].id) if len(rows) > limit else None
    return json_response({"entries": [entry(r) for r in page], "next_cursor": next_cursor})
