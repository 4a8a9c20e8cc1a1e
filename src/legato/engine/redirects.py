"""Which redirect hops a call follows, and what each hop still carries.

Legato follows redirects by hand (not aiohttp's own following) so that every hop is judged here:
a hop must not carry a service's credentials, or a request body, to a party the author did not
name, nor send them in clear after the call started over TLS, nor take credentials a `Location`
header chose.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What a followed redirect to another origin still sends (the rest may be credentials).
CROSS_ORIGIN_HEADERS = frozenset(
    {"accept", "accept-language", "content-type", "user-agent", "traceparent", "idempotency-key"}
)


class RedirectRefused(Exception):
    """A hop Legato will not take; the step fails with kind `status` (the answer is refused)."""


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or default


def upgrade(here: tuple[str, str, int | None], there: tuple[str, str, int | None]) -> bool:
    """A hop from http to https on the same host, from port 80 to 443 or on the same port: the
    host already got the body and the credentials in clear, so sending them again over TLS is
    strictly safer (dropping them would only earn a 401). Another port is another service."""
    if (here[0], there[0]) != ("http", "https") or here[1] != there[1]:
        return False
    return here[2] == there[2] or (here[2], there[2]) == (80, 443)


def without_userinfo(url: str) -> str:
    """A redirect target without `user:password@`: a `Location` header does not get to choose the
    credentials sent (aiohttp would turn them into an Authorization header)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def next_hop(
    method: str,
    url: str,
    status: int,
    location: str,
    headers: dict[str, str],
    data: bytes | str | None,
) -> tuple[str, str, dict[str, str], bytes | str | None]:
    """The method, URL, headers and body of the hop a redirect answer asks for, or
    RedirectRefused: a hop from https to http (everything would go out in clear), or a hop (a
    307/308, or a 301/302 of a method other than POST) that would re-send a request body to another
    origin. An upgrade (see `upgrade`) counts as the same origin: body and headers go on."""
    target = without_userinfo(urljoin(url, location))
    here, there = origin(url), origin(target)
    if here[0] == "https" and there[0] == "http":
        raise RedirectRefused(
            f"redirect {status} from https to http ({_plain(target)}) refused: "
            "the request would go out unencrypted"
        )
    if status == 303 or (status in (301, 302) and method == "POST"):
        method, data = ("HEAD" if method == "HEAD" else "GET"), None
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    if here != there and not upgrade(here, there):
        if data:
            raise RedirectRefused(
                f"redirect {status} to another origin ({_plain(target)}) refused: "
                "it would re-send the request body there"
            )
        headers = {k: v for k, v in headers.items() if k.lower() in CROSS_ORIGIN_HEADERS}
    return method, target, headers, data


def _plain(url: str) -> str:
    """The target as named in an error: scheme, host and path (no query, which may hold a key)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
