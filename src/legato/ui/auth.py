"""Signing in to the UI when the server has an API token.

A browser's EventSource cannot send an Authorization header, so the login form trades the token for
a session cookie (HttpOnly: scripts cannot read it; SameSite=Strict: other sites' pages never send
it). The cookie holds a random session id; the store keeps only its hash, the token's name and an
HMAC of the id under the token, so a session ends at its expiry, at logout, or when its token
changes, and works only where the store is shared (see legato.store.access).
Requests that change something and carry only the cookie must also carry the `X-Legato-UI` header,
which a cross-site form cannot send and a cross-site script cannot send without a CORS preflight
this server never grants.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import Scope

from legato.server.access import Token, Tokens
from legato.store.access import SessionRow
from legato.store.protocol import Store

COOKIE = "legato_session"
UI_HEADER = "x-legato-ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGE_PREFIXES = ("/workflows", "/runs", "/services")
MAX_LOGIN_BODY = 8192
DEFAULT_SESSION_TTL = 12 * 3600.0


def cookie_name(scope: Scope) -> str:
    """Cookies ignore ports, so two servers on one host (a demo beside a test server) would
    overwrite each other's session: the name carries the port the server listens on."""
    server = scope.get("server")
    return f"{COOKIE}_{server[1]}" if server and server[1] else COOKIE


def session_key(session_id: str) -> str:
    """What the store keeps of a session id: reading the table does not give a usable cookie."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def fingerprint(token: Token, session_id: str) -> str:
    return hmac.new(token.secret.encode(), session_id.encode(), hashlib.sha256).hexdigest()


async def open_session(store: Store, token: Token, ttl: float) -> str:
    """A new random session for `token`, stored before its id is handed out."""
    session_id = secrets.token_urlsafe(32)
    now = time.time()
    row = SessionRow(
        session_key(session_id), token.name, fingerprint(token, session_id), now, now + ttl
    )
    await store.add_session(row)
    return session_id


async def session_token(store: Store, tokens: Tokens, session_id: str | None) -> Token | None:
    """The token a session was made with, if the session exists, has not expired, and its token
    is still the same."""
    if not session_id or len(session_id) > 256:
        return None
    row = await store.get_session(session_key(session_id))
    if row is None or row.expires_at <= time.time():
        return None
    token = tokens.by_name.get(row.token_name)
    if token is None or not hmac.compare_digest(row.fingerprint, fingerprint(token, session_id)):
        return None
    return token


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


def set_session(
    response: Response, scope: Scope, session_id: str, secure: bool, ttl: float
) -> None:
    response.set_cookie(
        cookie_name(scope),
        session_id,
        max_age=max(1, math.ceil(ttl)),
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )


def clear_session(response: Response, scope: Scope) -> None:
    response.delete_cookie(cookie_name(scope), path="/", httponly=True, samesite="strict")
