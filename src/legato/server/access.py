"""Who may call the API and what each may change: named tokens with roles, the one table of roles
per route, throttling of failed guesses, and the middleware that applies them and writes the audit log.

A token file (`--token-file`, TOML) names several tokens, each with a role:

    [tokens]
    ci = { token = "a-long-random-string", role = "operate" }
    dashboard = { token = "another-long-string", role = "read" }

`read` may GET; `operate` may also start, cancel, retry and complete runs, send events and pause
schedules; `admin` may do everything (services, workflows, secrets, the audit log). `--token` is an
admin token named `default`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import re
import stat
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from legato.errors import LegatoError

log = logging.getLogger("legato.server")

READ, OPERATE, ADMIN = "read", "operate", "admin"
ROLES = (READ, OPERATE, ADMIN)  # each may do what the ones before it may
TOKEN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PUBLIC_TOKEN = 16  # characters a token needs for a server others can reach

# The one table of what each route needs: the first row matching the method and the whole path
# decides. Anything not listed that changes something needs `admin`.
_RULES: list[tuple[frozenset[str], re.Pattern[str], str]] = [
    (frozenset({"*"}), re.compile(r"/api/(audit|secrets|tokens)(/.*)?"), ADMIN),
    (frozenset({"GET", "HEAD", "OPTIONS"}), re.compile(r".*"), READ),
    (frozenset({"POST"}), re.compile(r"/api/workflows/[^/]+/(runs|trigger)"), OPERATE),
    (frozenset({"POST"}), re.compile(r"/api/runs/[^/]+/(cancel|retry)"), OPERATE),
    (frozenset({"POST"}), re.compile(r"/api/runs[:/](cancel|retry)"), OPERATE),  # in bulk
    (frozenset({"POST"}), re.compile(r"/api/runs/[^/]+/steps/[^/]+/complete"), OPERATE),
    (frozenset({"POST"}), re.compile(r"/e/[^/]+|/api/events"), OPERATE),
    (frozenset({"POST"}), re.compile(r"/api/schedules/[^/]+/(pause|unpause)"), OPERATE),
]


def role_needed(method: str, path: str) -> str:
    for methods, pattern, role in _RULES:
        if ("*" in methods or method in methods) and pattern.fullmatch(path):
            return role
    return ADMIN


def allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    role: str


class Tokens:
    """The tokens a server accepts; a presented secret is compared with each in constant time."""

    def __init__(self, tokens: list[Token]) -> None:
        names = [t.name for t in tokens]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise LegatoError(f"two tokens are named {duplicate!r}")
        if len({t.secret for t in tokens}) < len(tokens):
            raise LegatoError("two tokens have the same value: each needs its own")
        self.tokens = tokens
        self.by_name = {t.name: t for t in tokens}

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def find(self, given: str | bytes) -> Token | None:
        raw = given.encode() if isinstance(given, str) else given
        found = None
        for token in self.tokens:  # every one compared, so the time says nothing about which
            if hmac.compare_digest(raw, token.secret.encode()) and found is None:
                found = token
        return found

    def check_public(self, host: str) -> None:
        """Refuse a short token on an address others can reach (the caller knows it is one)."""
        for token in self.tokens:
            if len(token.secret) < MIN_PUBLIC_TOKEN:
                raise LegatoError(
                    f"refusing to serve {host} with a short token: {token.name!r} has "
                    f"{len(token.secret)} characters, a token others can reach needs at least "
                    f"{MIN_PUBLIC_TOKEN} (make one with `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`), or bind to 127.0.0.1"
                )


def load_tokens(token: str | None, token_file: str | None) -> Tokens:
    """`--token` (admin, named `default`) and the tokens of `--token-file`."""
    tokens = [Token("default", token, ADMIN)] if token else []
    if token_file:
        tokens += read_token_file(Path(token_file))
    return Tokens(tokens)


def read_token_file(path: Path) -> list[Token]:
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise LegatoError(f"cannot read the token file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("the token file %s can be read by other users: chmod 600 it", path)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LegatoError(f"the token file {path} is not TOML: {exc}") from None
    table = doc.get("tokens")
    if not isinstance(table, dict) or not table:
        raise LegatoError(f"the token file {path} needs a [tokens] table with at least one token")
    tokens = []
    for name, entry in table.items():
        where = f"the token file {path}: tokens.{name}"
        if not TOKEN_NAME.fullmatch(name):
            raise LegatoError(f"{where}: a name is 1-64 letters, digits, '_', '.' or '-'")
        if not isinstance(entry, dict) or set(entry) - {"token", "role"}:
            raise LegatoError(f'{where}: must be {{ token = "...", role = "read" }}')
        secret, role = entry.get("token"), entry.get("role")
        if not isinstance(secret, str) or not secret.strip() or secret != secret.strip():
            raise LegatoError(f"{where}.token: must be a string without surrounding spaces")
        if role not in ROLES:
            raise LegatoError(f"{where}.role: must be one of {', '.join(ROLES)}, not {role!r}")
        tokens.append(Token(name, secret, role))
    return tokens


class Budget:
    """At most `limit` of something per `window` seconds, in all: what an attacker with many
    addresses may still cost (a fixed window, so memory is two numbers)."""

    def __init__(self, limit: int = 60, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._start = -math.inf
        self._used = 0

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        if self._used >= self.limit:
            return False
        self._used += 1
        return True


def trusted_proxies(text: str | None) -> str | None:
    """`--forwarded-allow-ips`: the addresses (or CIDRs, or `*`) whose X-Forwarded-For names the
    client; None (the default) trusts nobody's, so no local process can pick its own address."""
    if text is None or not text.strip():
        return None
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if "*" in entries:
        if len(entries) > 1:
            raise LegatoError("--forwarded-allow-ips: '*' (any proxy) stands alone")
        return "*"
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise LegatoError(
                f"--forwarded-allow-ips: {entry!r} is not an IP address or CIDR"
            ) from None
    return ",".join(entries)


def client_key(client: str) -> str:
    """What a client is throttled as: its address, or its /64 for IPv6 (one machine often has a
    whole /64, and may pick a new address in it for each guess)."""
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return client[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Throttle:
    """Failed guesses per client (an address, an IPv6 /64: see `client_key`): after `limit` within
    `window` seconds, the client is refused (429) for `block` seconds, whatever it sends. Successes
    cost nothing. At most `max_clients` clients are remembered (the oldest forgotten first), so
    memory stays bounded."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        block: float = 60.0,
        max_clients: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.block = block
        self.max_clients = max_clients
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._blocked: OrderedDict[str, float] = OrderedDict()

    def wait(self, client: str, now: float | None = None) -> int:
        """Seconds the client must still wait (0: it may try)."""
        client = client_key(client)
        until = self._blocked.get(client)
        if until is None:
            return 0
        now = time.monotonic() if now is None else now
        if until <= now:
            del self._blocked[client]
            return 0
        return max(1, math.ceil(until - now))

    def fail(self, client: str, now: float | None = None) -> None:
        client = client_key(client)
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.pop(client, []) if t > now - self.window]
        recent.append(now)
        if len(recent) >= self.limit:
            self._blocked[client] = now + self.block
            recent = []
            log.warning(
                "%s guessed %d wrong tokens: refused for %.0f s", client, self.limit, self.block
            )
        if recent:
            self._failures[client] = recent
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        while len(self._blocked) > self.max_clients:
            self._blocked.popitem(last=False)
