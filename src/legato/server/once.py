"""The Idempotency-Key header and a caller's run id (`id`) of a start request, checked (422 naming
the header or the field) and turned into the engine's `Once` (see engine/starts.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from starlette.requests import Request

from legato.engine.starts import Once, check_key, check_run_id
from legato.server.errors import ApiError

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def once(request: Request, kind: str, body: dict[str, Any], run_id: object = None) -> Once | None:
    """None for an ordinary start. The digest covers the route and the whole body, so the same
    key sent with anything else is told apart."""
    key = request.headers.get(HEADER)
    if key is None and run_id is None:
        return None
    if key is not None and (problem := check_key(key)):
        raise ApiError(422, problem, HEADER)
    if run_id is not None and (problem := check_run_id(run_id)):
        raise ApiError(422, problem, "id")
    canonical = orjson.dumps([kind, body], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return Once(key, hashlib.sha256(canonical).hexdigest(), run_id if run_id else None)  # type: ignore[arg-type]


def headers(run_id: str, started: Once | None) -> dict[str, str]:
    out = {"Location": f"/api/runs/{run_id}"}
    if started is not None and started.replayed:
        out[REPLAYED] = "true"
    return out
