"""Calls services over HTTP with aiohttp (chosen by measurement: see docs/benchmarks.md).

One pooled session for the process; one semaphore per service holds its concurrency limit across every
run. The service is looked up at call time, so a changed address applies to the next call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import aiohttp
import orjson

from legato import __version__
from legato.engine.directory import DirectoryError, ExternalDirectory
from legato.engine.egress import EgressPolicy, EgressRefused
from legato.engine.egress_http import EgressConnector
from legato.engine.ids import traceparent
from legato.engine.outcome import Outcome, retry_after
from legato.engine.redirects import REDIRECTS, RedirectRefused, next_hop
from legato.engine.secret_source import (
    MissingSecret,
    SecretLookup,
    fetch_values,
    resolve_request,
)
from legato.expressions import Template
from legato.masking import CREDENTIAL_NAME, SHOWN_HEADERS, mask_text, mask_url
from legato.model.fields import check_object
from legato.model.service import (
    DEFAULT_TIMEOUT,
    Service,
    check_path,
    check_url_path,
    join_path,
)
from legato.model.workflow import HttpCall
from legato.secret_refs import scrub, service_names, service_substitute

USER_AGENT = f"legato/{__version__}"
_BODY_LIMIT_IN_ERROR = 2000
MAX_REDIRECTS = 10  # hops followed where redirects are followed at all


class HttpExecutor:
    def __init__(
        self,
        lookup: Callable[[str], Service | None],
        egress: EgressPolicy | None = None,
        secrets: SecretLookup | None = None,
    ) -> None:
        self._lookup = lookup
        self.egress = egress or EgressPolicy()
        # Asked for a service Legato's own directory does not have (`--directory-url`).
        self.directory: ExternalDirectory | None = None
        self._secrets = secrets
        self._session: aiohttp.ClientSession | None = None
        self._limits: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = EgressConnector(
                self.egress, limit=0, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda v: orjson.dumps(v).decode(),
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("User-Agent",),
                # No cookies kept: one service's Set-Cookie must never reach another run, workflow
                # or origin. A step that needs a cookie sends the header itself.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.directory is not None:
            await self.directory.close()

    def _known(self, name: str) -> Service | None:
        """Legato's own entry for `name`, else a fresh one of the external directory."""
        found = self._lookup(name)
        if found is None and self.directory is not None:
            found = self.directory.cached(name)
        return found

    def _semaphore(self, service: Service) -> asyncio.Semaphore:
        held = self._limits.get(service.name)
        if held is None or held[0] != service.concurrency:
            # A changed limit takes effect for calls not yet waiting; calls in flight finish as they are.
            held = (service.concurrency, asyncio.Semaphore(service.concurrency))
            self._limits[service.name] = held
        return held[1]

    async def _resolve(
        self,
        action: HttpCall,
        request: dict[str, Any],
        service: Service | None,
        used: dict[str, str],
    ) -> tuple[dict[str, Any], Service | None]:
        """The request and service with their secret references replaced by the values."""
        templates = (
            action.url,
            action.path,
            action.query,
            action.headers,
            action.json,
            action.body,
        )
        request = await resolve_request(request, templates, self._secrets, used)
        _query_credentials(request.get("query"), used)
        if service is None:
            return request, None
        names = service_names(service.base_url, service.token, *service.headers.values())
        if names:
            await fetch_values(names, self._secrets, used)
            service = replace(
                service,
                base_url=service_substitute(service.base_url, used),
                token=service_substitute(service.token, used) if service.token else None,
                headers={k: service_substitute(v, used) for k, v in service.headers.items()},
            )
        # A service that echoes its own credentials must not get them stored either.
        for k, v in service.headers.items():
            if k.lower() not in SHOWN_HEADERS:
                used[f"(header {k})"] = v
        _url_credentials(service.base_url, used)
        return request, service

    async def execute(
        self,
        run_id: str,
        step: str,
        action: HttpCall,
        request: dict[str, Any],
        timeout: float | None,
        extra_headers: dict[str, str] | None = None,
    ) -> Outcome:
        used: dict[str, str] = {}
        try:
            outcome = await self._execute(
                run_id, step, action, request, timeout, extra_headers, used
            )
        except MissingSecret as exc:
            return Outcome.failure("config", str(exc))
        if outcome.error is not None:  # errors name the URL they called: never its credentials
            outcome = replace(
                outcome,
                error={
                    k: mask_text(v) if k == "message" and isinstance(v, str) else v
                    for k, v in outcome.error.items()
                },
            )
        return _scrubbed(outcome, used)

    async def _execute(
        self,
        run_id: str,
        step: str,
        action: HttpCall,
        request: dict[str, Any],
        timeout: float | None,
        extra_headers: dict[str, str] | None,
        used: dict[str, str],
    ) -> Outcome:
        service: Service | None = None
        headers: dict[str, str] = {}
        bad_path = check_path(request.get("path"))
        if bad_path is not None:
            return Outcome.failure("config", f"http.path {bad_path}")
        bad_url = check_url_path(
            request.get("url")
        )  # a rendered `url:` too (its input may hold `../`)
        if bad_url is not None:
            return Outcome.failure("config", f"http.url: its path {bad_url}")
        if "service" in request:
            service = self._lookup(request["service"])
            if service is None and self.directory is not None:
                try:
                    service = await self.directory.service(request["service"])
                except DirectoryError as exc:
                    return exc.outcome()
            if service is None:
                return Outcome.failure(
                    "config", f"service {request['service']!r} is not in the directory"
                )
        # What messages name: the URL as written, its secrets and credentials as `***`.
        if service is not None:
            shown = mask_url(service.url(request.get("path", "")))
        else:
            shown = mask_url(join_path(request.get("url", ""), request.get("path")))
        request, service = await self._resolve(action, request, service, used)
        if service is not None:
            url = service.url(request.get("path", ""))
            headers.update(service.headers)
            if service.token:
                headers["Authorization"] = f"Bearer {service.token}"
            if service.inputs and "json" in request:
                _, problems = check_object(service.inputs, request["json"], "json", strict=False)
                if problems:
                    return Outcome.failure(
                        "input",
                        f"request does not match service {service.name!r}: "
                        + "; ".join(map(str, problems)),
                    )
        else:
            url = request["url"]
            if not url.startswith(("http://", "https://")):  # a secret that is no URL
                return Outcome.failure("config", "http.url must be an absolute http(s) URL")
            url = join_path(url, request.get("path"))
        headers.update(request.get("headers", {}))
        # A step's own Idempotency-Key (a business key a service expects) is sent as written, on
        # every attempt; otherwise Legato's: `<run>:<step>`, or a job's `<run>:<step>:<attempt>`.
        own_key = any(k.lower() == "idempotency-key" for k in request.get("headers", {}))
        if not own_key:
            headers["Idempotency-Key"] = f"{run_id}:{step}"
        headers["traceparent"] = traceparent(run_id)
        if extra_headers:
            headers.update(
                (k, v)
                for k, v in extra_headers.items()
                if not (own_key and k.lower() == "idempotency-key")
            )
        headers.setdefault("User-Agent", USER_AGENT)
        _credentials(url, headers, used)
        url = _userinfo_to_header(url, headers)
        data: bytes | str | None = None
        if "json" in request:
            data = orjson.dumps(request["json"])
            headers["Content-Type"] = "application/json"
        elif "body" in request:
            data = request["body"]
        method = request["method"]
        limit = timeout or (service.timeout if service else DEFAULT_TIMEOUT)
        where = f"{method} {shown}"
        follow = follows(action, service)
        try:
            # A call by URL has no directory entry, hence no limit.
            gate = self._semaphore(service) if service is not None else contextlib.nullcontext()
            async with gate:
                status, resp_headers, raw, ctype = await self._send(
                    method, url, request, headers, data, limit, follow
                )
        except EgressRefused as exc:
            return Outcome.failure("egress", f"{where}: {exc}")
        except aiohttp.TooManyRedirects:
            return Outcome.failure("status", f"{where}: more than {MAX_REDIRECTS} redirects")
        except RedirectRefused as exc:
            return Outcome.failure("status", f"{where}: {exc}")
        except TimeoutError:
            return Outcome.failure("timeout", f"{where} did not answer within {limit:g}s")
        except aiohttp.InvalidURL:
            return Outcome.failure("config", f"{where}: invalid URL")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome.failure(
                "network", f"{where} failed: {type(exc).__name__}: {exc}", **maybe_sent(exc)
            )
        except ValueError as exc:  # a header aiohttp refuses, ...
            return Outcome.failure("config", f"{where}: {exc}")
        body = _parse_body(raw, ctype)
        output = {"status": status, "headers": resp_headers, "body": body}
        if not action.is_success(status):
            kind = status_kind(status)
            detail = raw[:_BODY_LIMIT_IN_ERROR].decode("utf-8", "replace")
            wait = retry_after(resp_headers) if kind in ("429", "5xx") else {}
            return Outcome.failure(
                kind, f"{where} answered {status}", output, status=status, body=detail, **wait
            )
        if service is not None and service.outputs:
            _, problems = check_object(service.outputs, body, "body", strict=False)
            if problems:
                return Outcome.failure(
                    "output",
                    f"reply of service {service.name!r} does not match "
                    "its declared outputs: " + "; ".join(map(str, problems)),
                    output,
                )
        return Outcome(True, output)

    def follows(self, action: HttpCall) -> bool:
        return follows(action, self._known(action.service) if action.service else None)

    async def fetch(
        self,
        location: dict[str, str],
        templates: Iterable[Template | None] = (),
        follow_redirects: bool = False,
    ) -> Outcome | None:
        """GET a polled result: its body on 200, None on 404 (not there yet), a failure otherwise.
        The secrets its poll template names are put in where its rendering put them; neither they
        nor the URL's credentials are kept in the outcome."""
        used: dict[str, str] = {}
        try:
            sent = await resolve_request(location, templates, self._secrets, used)
        except MissingSecret as exc:
            return Outcome.failure("config", str(exc))
        outcome = await self._fetch(sent["url"], mask_url(location["url"]), used, follow_redirects)
        return None if outcome is None else _scrubbed(outcome, used)

    async def _fetch(
        self, url: str, shown: str, used: dict[str, str], follow_redirects: bool
    ) -> Outcome | None:
        headers = {"User-Agent": USER_AGENT}
        _url_credentials(url, used)
        sent = _userinfo_to_header(url, headers)
        url = shown  # for the messages below
        try:
            status, _, raw, ctype = await self._send(
                "GET", sent, {}, headers, None, 30.0, follow_redirects
            )
        except EgressRefused as exc:
            return Outcome.failure("egress", f"GET {url}: {exc}")
        except aiohttp.TooManyRedirects:
            return Outcome.failure("status", f"GET {url}: more than {MAX_REDIRECTS} redirects")
        except RedirectRefused as exc:
            return Outcome.failure("status", mask_text(f"GET {url}: {exc}"))
        except TimeoutError:
            return Outcome.failure("timeout", f"GET {url} did not answer within 30s")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome.failure(
                "network", mask_text(f"GET {url} failed: {type(exc).__name__}: {exc}")
            )
        except ValueError as exc:  # not a URL aiohttp can use (e.g. an empty host label)
            return Outcome.failure("config", mask_text(f"GET {url}: invalid URL: {exc}"))
        if status == 404:
            return None
        if status >= 300:
            kind = status_kind(status)
            return Outcome.failure(kind, f"GET {url} answered {status}", status=status)
        return Outcome(True, _parse_body(raw, ctype))

    async def _send(
        self,
        method: str,
        url: str,
        request: dict[str, Any],
        headers: dict[str, str],
        data: bytes | str | None,
        limit: float,
        follow: bool = False,
    ) -> tuple[int, dict[str, str], bytes, str]:
        """Without `follow`, a redirect is the answer (its status is judged like any other);
        with it, each hop's connection passes the egress policy like the first, and `limit` is
        one deadline for the call and all its hops."""
        timeout = self._timeouts.get(limit)
        if timeout is None:
            timeout = self._timeouts[limit] = aiohttp.ClientTimeout(total=limit)
        params = request.get("query")
        deadline = asyncio.get_running_loop().time() + limit
        for hop in range(MAX_REDIRECTS):  # as aiohttp counted: the call and 9 hops
            if hop:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise TimeoutError
                timeout = aiohttp.ClientTimeout(total=left)
            async with self._client().request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                location = resp.headers.get("Location")
                if not follow or resp.status not in REDIRECTS or not location:
                    raw = await resp.read()
                    out = {str(k): v for k, v in resp.headers.items()}
                    return resp.status, out, raw, resp.content_type
                info, history = resp.request_info, (*resp.history, resp)
            # Followed by hand: `next_hop` says what the hop may still carry, or refuses it.
            method, url, headers, data = next_hop(
                method, str(resp.url), resp.status, location, headers, data
            )
            params = None
        raise aiohttp.TooManyRedirects(info, history)


def follows(action: HttpCall, service: Service | None) -> bool:
    """Whether a step's call follows redirects: as the step says, else as its service says."""
    if action.follow_redirects is not None:
        return action.follow_redirects
    return service is not None and service.follow_redirects


def _credentials(url: str, headers: dict[str, str], used: dict[str, str]) -> None:
    """Credentials that are not secrets by name (a URL's password and key-like query values, the
    values of headers named like credentials), kept in `used` so that they are scrubbed from what is
    stored (only long ones: see `secret_refs.SCRUB_MIN`)."""
    _url_credentials(url, used)
    for k, v in headers.items():
        if k.lower() in SHOWN_HEADERS or not CREDENTIAL_NAME.fullmatch(k):
            continue
        if k.lower() in ("authorization", "proxy-authorization"):
            used[f"({k.lower()})"] = v.split(" ", 1)[-1]
        used[f"(header {k})"] = v


def _scrubbed(outcome: Outcome, used: dict[str, str]) -> Outcome:
    """The outcome without the credentials the call used: a service that echoes what it got must
    not get a secret stored."""
    if not used:
        return outcome
    return replace(
        outcome,
        output=scrub(outcome.output, used.values()),
        error=scrub(outcome.error, used.values()),
    )


def _url_credentials(url: str, used: dict[str, str]) -> None:
    for key, value in _credentials_in_url(url):
        used[key] = value


@functools.lru_cache(maxsize=1024)
def _credentials_in_url(url: str) -> tuple[tuple[str, str], ...]:
    """A service's URL credentials (its URL is the same for every call: parsed once)."""
    used: dict[str, str] = {}
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return ()
    if password:
        used["(url password)"] = unquote(password)
    for name, value in parse_qsl(parts.query) + parse_qsl(parts.fragment):
        if CREDENTIAL_NAME.fullmatch(name):
            used[f"(query {name})"] = value
    return tuple(used.items())


def _query_credentials(query: Any, used: dict[str, str]) -> None:
    if isinstance(query, dict):
        for k, v in query.items():
            if isinstance(v, str) and CREDENTIAL_NAME.fullmatch(str(k)):
                used[f"(query {k})"] = v


def _userinfo_to_header(url: str, headers: dict[str, str]) -> str:
    """The URL without its `user:password@`, which becomes Basic auth unless the call already has an
    Authorization header (a service's token, or the step's own header): that one wins. aiohttp
    refuses a URL with userinfo together with an Authorization header."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # aiohttp reports it as an invalid URL
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    if not any(k.lower() == "authorization" for k in headers):
        user, _, password = userinfo.partition(":")
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def maybe_sent(exc: BaseException) -> dict[str, bool]:
    """`{"sent": True}` for a network failure after the request may have reached the service (the
    server hung up, a reset after sending, a broken answer): a job's submission that fails so is
    as unsure as a timeout, so the decider resubmits it only under a written `on` naming `network`.
    Nothing for a failure to connect (refused, DNS, TLS handshake): nothing was sent."""
    if isinstance(exc, aiohttp.ClientConnectorError | socket.gaierror | ConnectionRefusedError):
        return {}
    return {"sent": True}


def status_kind(status: int) -> str:
    """The failure kind of an answer that is not a success (retry policies name these)."""
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status >= 400:
        return "4xx"
    return "status"


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "json" in content_type:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return raw.decode("utf-8", "replace")
