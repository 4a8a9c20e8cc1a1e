"""Renders a step's templated arguments into the concrete request its executor sends (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from legato.expressions import Context, TemplateError
from legato.model.workflow import Call, Emit, PythonCall
from legato.sandbox import LIMITS
from legato.secret_refs import TAG_KEY, SecretRefs


def render_request(action: Call, ctx: Context) -> dict[str, Any]:
    """Raise TemplateError when a template fails or renders to the wrong shape, or (kind "limit")
    when the request is larger than templates may make: it is then neither stored nor sent.

    Secrets render to markers with a tag made for this rendering, kept in the request's `TAG_KEY`
    when one is there: only those markers are ever sent as values (see secret_refs)."""
    refs = SecretRefs(fresh=True)
    request = _render(action, {**ctx, "secrets": refs})
    tag = refs.made
    try:
        raw = orjson.dumps(request)
    except TypeError:  # not JSON: the executor refuses it, as before
        return request
    size = len(raw)
    if tag is not None and tag.encode() in raw:
        request[TAG_KEY] = tag
    if size > LIMITS.max_size:
        raise TemplateError(
            f"the rendered request is {size} bytes; the limit is {LIMITS.max_size} "
            "(legato serve --max-rendered)",
            "limit",
        )
    return request


def _render(action: Call, ctx: Context) -> dict[str, Any]:
    if isinstance(action, Emit):
        to = action.to.render(ctx)
        if not isinstance(to, str) or not to:
            raise TemplateError(f"emit.to must render to a destination name, got {to!r}")
        out: dict[str, Any] = {"transport": action.transport, "to": to}
        out["message"] = action.message.render(ctx) if action.message is not None else None
        if action.headers is not None:
            out["headers"] = _string_map(action.headers.render(ctx), "emit.headers")
        return out
    if isinstance(action, PythonCall):
        args = action.args.render(ctx) if action.args is not None else {}
        if not isinstance(args, dict):
            raise TemplateError("python.args must render to a mapping")
        return {"function": action.function, "args": args}
    req: dict[str, Any] = {"method": action.method}
    if action.service is not None:
        req["service"] = action.service
    if action.url is not None:
        url = action.url.render(ctx)
        # A URL may be a secret as a whole; the executor checks it once the secret is in.
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "~~secret.")):
            raise TemplateError(f"http.url must render to an absolute http(s) URL, got {url!r}")
        req["url"] = url
    path = action.path.render(ctx)
    if path not in ("", None):
        req["path"] = str(path)
    if action.query is not None:
        req["query"] = _string_map(action.query.render(ctx), "http.query")
    if action.headers is not None:
        req["headers"] = _string_map(action.headers.render(ctx), "http.headers")
    if action.json is not None:
        req["json"] = action.json.render(ctx)
    elif action.body is not None:
        body = action.body.render(ctx)
        req["body"] = body if isinstance(body, str) else str(body)
    return req


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TemplateError(f"{what} must render to a mapping, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        out[str(k)] = str(v)
    return out
