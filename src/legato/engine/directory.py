"""A CoWorks-style directory service as a second source of services: `--directory-url URL`.

A step naming a service that Legato's own directory does not have is looked up at
`GET {URL}/url/{name}`, which answers `{"url": "https://...", "token": "..."}`. The token goes to the
service as the whole `Authorization` header (no `Bearer ` in front), as CoWorks' operators send it, so a
CoWorks microservice's token authorizer accepts the call unchanged.

Why this shape:
- Answers are cached for `ttl` seconds (60 by default) and at most `size` names are kept (the oldest
  go first), so a busy workflow asks the directory once a minute per service, not once a call, and a
  directory listing any number of names cannot grow the process. Failures are not cached: the next
  attempt asks again. Concurrent lookups of one name share one request.
- A directory that cannot be reached, times out or answers 429/5xx fails the step with kind `network`
  (retried like any transient failure); one that answers 404 (no such service) or something that is
  not an entry fails it with kind `config` (not retried): either way the step fails, the engine never
  does.
- The directory's URL is the operator's setting, like the database's: it is not subject to the egress
  policy. The URLs it hands out are: calls to them go through the same connector as every step.
- An entry cannot name Legato secrets (`{{ secrets.X }}`): the directory could otherwise have a
  secret sent to an address of its choosing.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import orjson

from legato import __version__
from legato.engine.outcome import Outcome
from legato.masking import mask_url
from legato.model.service import Service, check_url

DEFAULT_TTL = 60.0
DEFAULT_SIZE = 1024
LOOKUP_TIMEOUT = 10.0
_MAX_ANSWER = 64 * 1024


class DirectoryError(Exception):
    """A lookup that found no usable entry; `kind` is the step's failure kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def outcome(self) -> Outcome:
        return Outcome.failure(self.kind, str(self))


class ExternalDirectory:
    def __init__(
        self,
        url: str,
        *,
        ttl: float = DEFAULT_TTL,
        size: int = DEFAULT_SIZE,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        problem = check_url(url)
        if problem:
            raise ValueError(f"--directory-url {problem}")
        # A query (`?api_key=...`) stays after the lookup path and is never shown; a fragment is
        # never sent, so it is dropped.
        parts = urlsplit(url)
        self._base = parts._replace(path=parts.path.rstrip("/"), fragment="")
        self.url = urlunsplit(self._base)
        self.shown = mask_url(urlunsplit(self._base._replace(query="***" if parts.query else "")))
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.timeout = timeout
        self._cache: OrderedDict[str, tuple[float, Service]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Service]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.lookups = 0  # requests sent to the directory (for tests and metrics)

    def cached(self, name: str) -> Service | None:
        """The entry for `name` if it is fresh, without asking the directory."""
        held = self._cache.get(name)
        if held is None:
            return None
        if self.clock() - held[0] >= self.ttl:
            del self._cache[name]
            return None
        return held[1]

    async def service(self, name: str) -> Service:
        """The entry for `name`, from the cache or the directory; DirectoryError otherwise."""
        while True:
            found = self.cached(name)
            if found is not None:
                return found
            pending = self._pending.get(name)
            if pending is None:
                return await self._lookup(name)
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # the step that asked was cancelled, not this one: ask again

    async def _lookup(self, name: str) -> Service:
        future: asyncio.Future[Service] = asyncio.get_running_loop().create_future()
        self._pending[name] = future
        try:
            service = await self._ask(name)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # a DirectoryError, or a bug: the waiters get it too
            future.set_exception(exc)
            future.exception()  # retrieved here: nobody else may be waiting
            raise
        finally:
            self._pending.pop(name, None)
        future.set_result(service)
        self._cache[name] = (self.clock(), service)
        self._cache.move_to_end(name)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return service

    async def _ask(self, name: str) -> Service:
        where = f"the service directory {self.shown}"
        url = urlunsplit(self._base._replace(path=f"{self._base.path}/url/{quote(name, safe='')}"))
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": f"legato/{__version__}", "Accept": "application/json"},
                cookie_jar=aiohttp.DummyCookieJar(),  # a lookup carries no cookie of an earlier one
            )
        self.lookups += 1
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                status = resp.status
                raw = await _read_capped(resp.content, _MAX_ANSWER + 1)
        except TimeoutError:
            raise DirectoryError(
                "network", f"{where} did not answer within {self.timeout:g}s (service {name!r})"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise DirectoryError(
                "network",
                f"{where} cannot be reached (service {name!r}): {type(exc).__name__}: {exc}",
            ) from None
        if status == 404:
            raise DirectoryError("config", f"service {name!r} is in neither directory ({where})")
        if status == 429 or status >= 500:
            raise DirectoryError("network", f"{where} answered {status} for service {name!r}")
        if status != 200:
            raise DirectoryError("config", f"{where} answered {status} for service {name!r}")
        return entry(name, raw, where)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> bytes:
    """The body up to its end or `cap` bytes: a single read() returns only what has arrived, so an
    answer sent in several chunks would look cut short."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        chunk = await stream.read(cap - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def entry(name: str, raw: bytes, where: str) -> Service:
    """The service an answer describes, or DirectoryError (kind `config`) saying what is wrong."""

    def junk(why: str) -> DirectoryError:
        return DirectoryError("config", f"{where} gave no usable entry for {name!r}: {why}")

    if len(raw) > _MAX_ANSWER:
        raise junk(f"the answer is over {_MAX_ANSWER} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise junk("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise junk('the answer is not an object like {"url": ..., "token": ...}')
    url = data.get("url")
    if not isinstance(url, str) or not url:
        raise junk('"url" is missing or not a string')
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise junk('"token" is not a string')
    for field, value in (("url", url), ("token", token or "")):
        if "{{" in value or "~~secret." in value:
            raise junk(f'"{field}" may not name a secret')
        if any(c in value for c in "\r\n\x00"):
            raise junk(f'"{field}" has control characters')
    problem = check_url(url)
    if problem:
        raise junk(f'"url" {problem}')
    headers = {"Authorization": token} if token else {}
    return Service(name=name, base_url=url, headers=headers)
