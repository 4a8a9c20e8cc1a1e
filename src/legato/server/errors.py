"""API errors: every refusal is a JSON body naming the field and the problem, never a traceback.

The body has the same shape as `ValidationError.to_dict()`, so clients read one format whatever the
cause: `{"error": kind, "message": text, "problems": [{"path", "message"}]}`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from legato.errors import Conflict, LegatoError, NotFound, ValidationError
from legato.store.faults import RETRY_AFTER, TROUBLE, Unfinished, unavailable

log = logging.getLogger("legato.server")

_KINDS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by route code to answer with a 4xx (or 503) and a JSON body."""

    def __init__(self, status: int, message: str, path: str = "", kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.path = path
        self.kind = kind or _KINDS.get(status, "error")

    def body(self) -> dict[str, Any]:
        return {
            "error": self.kind,
            "message": self.message,
            "problems": [{"path": self.path, "message": self.message}],
        }


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(exc: Exception) -> Response:
    """The one mapping from an exception to an HTTP answer."""
    if isinstance(exc, ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": str(RETRY_AFTER)}
        if exc.status == 413:
            # The body was not read: the connection must end, or its rest would be parsed as the
            # next request on it (the client's next call answered 431 with the body as headers).
            headers = {"Connection": "close"}
        return json_response(exc.body(), exc.status, headers)
    if isinstance(exc, Unfinished):  # not the database's fault: it goes on
        body = ApiError(503, str(exc), kind="unfinished").body()
        return json_response(body, 503, {"Retry-After": str(RETRY_AFTER)})
    fault = unavailable(exc)
    if fault is not None:  # not a bug: no traceback, one log line per kind every 10 s
        TROUBLE.report(fault, "a request")
        body = ApiError(503, str(fault), kind="store_unavailable").body()
        return json_response(body, 503, {"Retry-After": str(RETRY_AFTER)})
    if isinstance(exc, ValidationError):
        return json_response(exc.to_dict(), 422)
    if isinstance(exc, NotFound):
        return json_response(ApiError(404, str(exc)).body(), 404)
    if isinstance(exc, Conflict):
        return json_response(ApiError(409, str(exc)).body(), 409)
    if isinstance(exc, HTTPException):
        body = ApiError(exc.status_code, str(exc.detail)).body()
        return json_response(body, exc.status_code, dict(exc.headers or {}))  # keeps 405's Allow
    if isinstance(exc, LegatoError):
        return json_response(ApiError(400, str(exc)).body(), 400)
    log.exception("unexpected error", exc_info=exc)
    body = {"error": "internal", "message": "internal error; the server log has the details"}
    return json_response(body, 500)


async def handle(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client hung up before it sent the whole body: nobody hears an answer, and it is no fault
    of the server (a traceback for each would let any client fill the log)."""
    log.debug("%s %s: the client left before its body was read", request.method, request.url.path)
    return Response(status_code=499)  # nginx's "client closed request"; never sent
