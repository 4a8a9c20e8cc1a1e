"""Reading request bodies and query parameters, refusing bad ones with a 4xx that names the field."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import orjson
from starlette.requests import Request

from legato.errors import DefinitionError
from legato.formats.loader import parse_document
from legato.server.errors import ApiError

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limit}", "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def json_object(request: Request, limit: int, *, required: bool = True) -> dict[str, Any]:
    """A JSON object body; an empty body is `{}` when not `required`."""
    media = _media_type(request)
    # Read JSON whatever the type says (curl -d sends a form type), but not a type that is surely
    # something else: that is a client sending the wrong thing, and saying so helps more.
    if media.startswith("multipart/") or media in YAML_TYPES:
        raise ApiError(415, f"send JSON (Content-Type: application/json), not {media}", "body")
    raw = await read_body(request, limit)
    if not raw.strip():
        if required:
            raise ApiError(400, "the body is empty; send a JSON object", "body")
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", "body", "malformed_json") from None
    if not isinstance(value, dict):
        raise ApiError(422, f"must be a JSON object, not {type(value).__name__}", "body")
    try:
        orjson.dumps(value)  # what the store writes back must be writable (depth past 254 is not)
    except TypeError as exc:
        raise ApiError(422, f"cannot be stored as JSON: {exc}", "body") from None
    return value


def _parse(raw: bytes, fmt: str) -> Any:
    """In a thread (a big YAML takes seconds), without the garbage collector: a parsed document
    holds no reference cycles, yet its ~100,000 new objects (1 MiB) set off a full collection
    that stops every thread, the event loop's too, for up to 100 ms each time one is posted."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return parse_document(raw, fmt)
    finally:
        if collecting:
            gc.enable()


async def document(request: Request, limit: int) -> Any:
    """A definition document: JSON or YAML by Content-Type (either, when none is given)."""
    media = _media_type(request)
    if media in ("application/json",) or media.endswith("+json"):
        fmt = "json"
    elif media in YAML_TYPES:
        fmt = "yaml"
    elif media in ("", "text/plain", "application/octet-stream"):
        fmt = "auto"
    else:
        raise ApiError(
            415, f"send JSON or YAML (application/json, application/yaml), not {media}", "body"
        )
    raw = await read_body(request, limit)
    if not raw.strip():
        raise ApiError(400, "the body is empty; send a workflow definition", "body")
    try:
        return await asyncio.to_thread(_parse, raw, fmt)
    except DefinitionError as exc:
        problem = exc.problems[0]
        raise ApiError(400, problem.message, "body", "malformed_document") from None
    except (ValueError, RecursionError) as exc:  # YAML that is not text, or nested past reason
        raise ApiError(400, f"unreadable document: {exc}", "body", "malformed_document") from None


def only_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiError(
                422, f"unknown field; expected one of: {', '.join(allowed)}", str(key), "invalid"
            )


def object_field(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(422, f"must be a JSON object, not {type(value).__name__}", name)
    return value


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"must be an integer, not {text!r}", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"must be between {low} and {high}", name)
    return value


def query_seconds(request: Request, name: str, high: float) -> float | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"must be a number of seconds, not {text!r}", name) from None
    if not 0 <= value <= high:  # also refuses NaN
        raise ApiError(400, f"must be between 0 and {high:g} seconds", name)
    return value


def query_choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in choices:
        raise ApiError(400, f"must be one of {', '.join(choices)}, not {value!r}", name)
    return value
