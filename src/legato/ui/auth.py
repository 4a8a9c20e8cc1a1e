"""Signing in to the UI when the server has an API token.

A browser's EventSource cannot send an Authorization header, so the login form trades the token for
a session cookie (HttpOnly: scripts cannot read it; SameSite=Strict: other sites' pages never send
it). The cookie holds an HMAC of the token, not the token, and is valid as long as the token is.
Requests that change something and carry only the cookie must also carry the `X-Legato-UI` header,
which a cross-site form cannot send and a cross-site script cannot send without a CORS preflight
this server never grants.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import Scope

COOKIE = "legato_session"
UI_HEADER = "x-legato-ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGE_PREFIXES = ("/workflows", "/runs", "/services")
MAX_LOGIN_BODY = 8192


def cookie_name(scope: Scope) -> str:
    """Cookies ignore ports, so two servers on one host (a demo beside a test server) would
    overwrite each other's session: the name carries the port the server listens on."""
    server = scope.get("server")
    return f"{COOKIE}_{server[1]}" if server and server[1] else COOKIE


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"legato-ui-session", hashlib.sha256).hexdigest()


def valid_session(cookie: str | None, token: str) -> bool:
    return cookie is not None and hmac.compare_digest(
        cookie.encode(), session_value(token).encode()
    )


def is_page(path: str, method: str) -> bool:
    """A UI page a person opens: without a session it sends them to the login form, not a 401
    (a run's event stream is read by a script, which is better told 401)."""
    if method not in SAFE_METHODS or path.endswith("/events"):
        return False
    return path == "/" or path.startswith(PAGE_PREFIXES)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (never `//elsewhere`)."""
    if not target or not target.startswith("/") or "\\" in target:
        return "/"
    # Browsers drop tabs and newlines from URLs, so `/\t/evil` would become `//evil`.
    if any(ord(c) < 0x20 or c == "\x7f" for c in target) or target.startswith("//"):
        return "/"
    return target


def login_redirect(path: str, query: str) -> Response:
    here = path + ("?" + query if query else "")
    return RedirectResponse("/login?next=" + quote(here, safe=""), 303)


async def login_form(request: Request) -> tuple[str, str]:
    """The token and the next page from the form's urlencoded body (no multipart parser needed)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_LOGIN_BODY:
            break
    fields = parse_qs(raw[:MAX_LOGIN_BODY].decode("utf-8", "replace"))
    return fields.get("token", [""])[0].strip(), fields.get("next", ["/"])[0]


def set_session(response: Response, scope: Scope, token: str, secure: bool) -> None:
    response.set_cookie(
        cookie_name(scope),
        session_value(token),
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )


def clear_session(response: Response, scope: Scope) -> None:
    response.delete_cookie(cookie_name(scope), path="/", httponly=True, samesite="strict")
