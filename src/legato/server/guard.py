"""The one middleware between the network and the API: who is calling (a bearer token or the UI's
session), whether they are guessing (throttled per client address), whether their role allows the
route (`access.role_needed`), and the audit row of every change they make.

Without tokens the API is open, but changes are still audited (with no token name). A request
that names no token (refused, or on an open path such as /login) and a failed one on an open
server are audited within a budget for all clients together (`UNAUTHENTICATED_PER_MINUTE`), and
a change sent with no credentials counts as a wrong guess: nobody without a token can fill the
disk with audit rows. Recorded paths are cut at `MAX_PATH` characters.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legato.server.access import Budget, Throttle, Token, Tokens, allows, role_needed
from legato.server.errors import ApiError, error_response, json_response
from legato.store.access import AuditRow
from legato.store.protocol import Store
from legato.ui import auth

log = logging.getLogger("legato.server")

MAX_PATH = 512  # characters of a path the audit log keeps
UNAUTHENTICATED_PER_MINUTE = 60  # audit rows of requests with no token, from all clients

IDENTITY = "legato.token"  # the scope key naming the token a request was made with
# The run, workflow, service, schedule or secret a change was about, from its path or Location.
_TARGET = re.compile(
    r"^/api/runs/(?P<run>[0-9a-f]{32})|^/api/(?:workflows|services|schedules|secrets)/(?P<name>[^/]+)"
    r"|^/e/(?P<event>[^/]+)"
)


class QuietLog:
    """A warning per kind at most every `every` seconds, with how many were left out: a database
    that is down must not turn every request into a log line."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        more = f" ({left_out} more in the last {now - last:.0f} s)" if left_out and last else ""
        log.warning("%s%s", message, more)


QUIET = QuietLog()


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def target_of(path: str, location: str | None) -> str | None:
    for where in (location, path):
        found = _TARGET.match(where or "")
        if found:
            return cut(next(v for v in found.groups() if v), MAX_PATH)
    return None


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more)"


def _refuse(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> Response:
    if status in (401, 503):
        return error_response(ApiError(status, message, "Authorization"))
    return json_response(ApiError(status, message, "Authorization", kind).body(), status, headers)


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        tokens: Tokens,
        open_paths: tuple[str, ...],
        throttle: Throttle | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.tokens = tokens
        self.open_paths = open_paths
        self.throttle = throttle or Throttle()
        self.unauthenticated = Budget(UNAUTHENTICATED_PER_MINUTE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in auth.SAFE_METHODS:
            send = self._audited(scope, send)
        if not self.tokens or scope["path"].startswith(self.open_paths):
            await self.app(scope, receive, send)
            return
        response = await self._check(scope)
        await (response or self.app)(scope, receive, send)

    async def _check(self, scope: Scope) -> Response | None:
        """None if the request may go on, else the refusal to send."""
        client = client_address(scope)
        wait = self.throttle.wait(client)
        if wait:
            message = f"too many wrong tokens from {client}: try again in {wait} s"
            return _refuse(429, message, "too_many_requests", {"Retry-After": str(wait)})
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")
        if given:
            scheme, _, credentials = given.strip().partition(b" ")
            # The scheme is case-insensitive (RFC 9110); tokens are compared in constant time.
            token = self.tokens.find(credentials.strip()) if scheme.lower() == b"bearer" else None
            if token is None:
                self.throttle.fail(client)
                return _refuse(401, "the bearer token is not valid", "unauthorized")
        else:
            cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
            try:
                token = await auth.session_token(
                    self.store, self.tokens, cookies.get(auth.cookie_name(scope))
                )
            except Exception as exc:  # the store is down: say so, not 500
                QUIET.warn("sessions", f"cannot read sessions: {exc}")
                return _refuse(503, "the session store cannot be read; try again", "unavailable")
            if token is None:
                if auth.is_page(scope["path"], scope["method"]):
                    query = scope.get("query_string", b"").decode("latin-1")
                    return auth.login_redirect(scope["path"], query)
                if scope["method"] not in auth.SAFE_METHODS:
                    self.throttle.fail(client)  # a change with no credentials: like a bad guess
                message = "this server needs Authorization: Bearer <token>"
                return _refuse(401, message, "unauthorized")
            if (
                scope["method"] not in auth.SAFE_METHODS
                and headers.get(auth.UI_HEADER.encode()) != b"1"
            ):
                message = "a change made with the UI's session cookie must carry X-Legato-UI: 1"
                return json_response(ApiError(403, message, "X-Legato-UI", "forbidden").body(), 403)
        scope[IDENTITY] = token.name
        return self._role_refusal(scope, token)

    def _role_refusal(self, scope: Scope, token: Token) -> Response | None:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        needed = role_needed(method, scope["path"])
        if allows(token.role, needed):
            return None
        message = (
            f"{method} {scope['path']} needs the {needed!r} role; token {token.name!r} has "
            f"{token.role!r}"
        )
        body = ApiError(403, message, "Authorization", "forbidden").body()
        body["role_needed"] = needed
        return json_response(body, 403)

    def _audited(self, scope: Scope, send: Send) -> Send:
        """`send`, recording the change when its answer starts (before the client can see it)."""

        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 429:
                await self._record(scope, message)
            await send(message)

        return audited

    async def _record(self, scope: Scope, start: Message) -> None:
        token, status = _identity(scope), int(start["status"])
        if token is None and (self.tokens or status >= 400) and not self.unauthenticated.take():
            QUIET.warn(
                "audit-unauthenticated",
                f"not auditing more than {UNAUTHENTICATED_PER_MINUTE} requests a minute "
                "made without a token (or refused on a server without tokens)",
            )
            return
        location = next(
            (v.decode("latin-1") for k, v in start.get("headers", []) if k.lower() == b"location"),
            None,
        )
        row = AuditRow(
            at=time.time(),
            token=token,
            method=cut(scope["method"], 16),
            path=cut(scope["path"], MAX_PATH),
            target=target_of(scope["path"], location),
            status=status,
            client=cut(client_address(scope), 64),
        )
        try:
            await self.store.add_audit(row)
        except Exception as exc:  # the change is made: its answer must not be lost with the row
            QUIET.warn("audit", f"cannot write the audit log ({row.method} {row.path}): {exc}")


def _identity(scope: Scope) -> str | None:
    name: Any = scope.get(IDENTITY)
    return name if isinstance(name, str) else None
