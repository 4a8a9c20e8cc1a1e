"""`/api/secrets`: set, list and delete the secrets that templates read as `{{ secrets.NAME }}`.

Write-only: no route answers a value, so a token that can read the API cannot read a secret back.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from legato.secret_refs import NAME
from legato.server import bodies
from legato.server.errors import ApiError, json_response
from legato.server.payloads import iso
from legato.server.routes import _ctx


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not NAME.fullmatch(name):
        raise ApiError(
            422,
            "a secret's name is 1-128 letters, digits or '_', not starting with a digit",
            "name",
        )
    return name


async def list_secrets(request: Request) -> Response:
    found = await _ctx(request).engine.secrets.listing()
    for entry in found:
        if "updated_at" in entry:
            entry["updated_at"] = iso(entry["updated_at"])
    return json_response({"secrets": found})


async def put_secret(request: Request) -> Response:
    """The value is the JSON body's `value`, or a text/plain body as it is."""
    ctx = _ctx(request)
    name = _name(request)
    if request.headers.get("content-type", "").startswith("text/plain"):
        try:  # "replace" would store another value than the one sent
            value: object = (await bodies.read_body(request, ctx.max_body)).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "must be UTF-8 text", "value") from None
    else:
        body = await bodies.json_object(request, ctx.max_body)
        for extra in sorted(set(body) - {"value"}):
            raise ApiError(422, 'unknown field (a secret\'s body is {"value": "..."})', extra)
        value = body.get("value")
    if not isinstance(value, str) or not value:
        raise ApiError(422, "must be a non-empty string", "value")
    if "\x00" in value:  # PostgreSQL's text cannot hold it
        raise ApiError(422, "must not contain NUL characters", "value")
    existed = await ctx.engine.store.get_user_secret(name) is not None
    await ctx.engine.secrets.put(name, value)
    body = {"name": name, "source": "store", "updated_at": iso(time.time())}
    return json_response(body, 200 if existed else 201)


async def delete_secret(request: Request) -> Response:
    name = _name(request)
    if not await _ctx(request).engine.secrets.delete(name):
        raise ApiError(404, f"no stored secret named {name!r}", "name")
    return Response(status_code=204)
