"""Calls services over HTTP with aiohttp (chosen by measurement: see docs/benchmarks.md).

One pooled session for the process; one semaphore per service holds its concurrency limit across every
run. The service is looked up at call time, so a changed address applies to the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from legato import __version__
from legato.engine.egress import EgressPolicy, EgressRefused
from legato.engine.egress_http import EgressConnector
from legato.engine.ids import traceparent
from legato.engine.outcome import Outcome
from legato.model.fields import check_object
from legato.model.service import DEFAULT_TIMEOUT, Service
from legato.model.workflow import HttpCall

USER_AGENT = f"legato/{__version__}"
_BODY_LIMIT_IN_ERROR = 2000
MAX_REDIRECTS = 10  # hops followed where redirects are followed at all


class HttpExecutor:
    def __init__(
        self, lookup: Callable[[str], Service | None], egress: EgressPolicy | None = None
    ) -> None:
        self._lookup = lookup
        self.egress = egress or EgressPolicy()
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
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _semaphore(self, service: Service) -> asyncio.Semaphore:
        held = self._limits.get(service.name)
        if held is None or held[0] != service.concurrency:
            # A changed limit takes effect for calls not yet waiting; calls in flight finish as they are.
            held = (service.concurrency, asyncio.Semaphore(service.concurrency))
            self._limits[service.name] = held
        return held[1]

    async def execute(
        self,
        run_id: str,
        step: str,
        action: HttpCall,
        request: dict[str, Any],
        timeout: float | None,
        extra_headers: dict[str, str] | None = None,
    ) -> Outcome:
        service: Service | None = None
        headers: dict[str, str] = {}
        if "service" in request:
            service = self._lookup(request["service"])
            if service is None:
                return Outcome.failure(
                    "config", f"service {request['service']!r} is not in the directory"
                )
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
            if request.get("path"):
                url = url.rstrip("/") + "/" + request["path"].lstrip("/")
        headers.update(request.get("headers", {}))
        headers["Idempotency-Key"] = f"{run_id}:{step}"
        headers["traceparent"] = traceparent(run_id)
        if extra_headers:
            headers.update(extra_headers)
        headers.setdefault("User-Agent", USER_AGENT)
        data: bytes | str | None = None
        if "json" in request:
            data = orjson.dumps(request["json"])
            headers["Content-Type"] = "application/json"
        elif "body" in request:
            data = request["body"]
        method = request["method"]
        limit = timeout or (service.timeout if service else DEFAULT_TIMEOUT)
        where = f"{method} {url}"
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
        except TimeoutError:
            return Outcome.failure("timeout", f"{where} did not answer within {limit:g}s")
        except aiohttp.InvalidURL:
            return Outcome.failure("config", f"{where}: invalid URL")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome.failure("network", f"{where} failed: {type(exc).__name__}: {exc}")
        body = _parse_body(raw, ctype)
        output = {"status": status, "headers": resp_headers, "body": body}
        if not action.is_success(status):
            kind = status_kind(status)
            detail = raw[:_BODY_LIMIT_IN_ERROR].decode("utf-8", "replace")
            return Outcome.failure(
                kind, f"{where} answered {status}", output, status=status, body=detail
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
        return follows(action, self._lookup(action.service) if action.service else None)

    async def fetch(self, url: str, follow_redirects: bool = False) -> Outcome | None:
        """GET a polled result: its body on 200, None on 404 (not there yet), a failure otherwise."""
        try:
            status, _, raw, ctype = await self._send(
                "GET", url, {}, {"User-Agent": USER_AGENT}, None, 30.0, follow_redirects
            )
        except EgressRefused as exc:
            return Outcome.failure("egress", f"GET {url}: {exc}")
        except aiohttp.TooManyRedirects:
            return Outcome.failure("status", f"GET {url}: more than {MAX_REDIRECTS} redirects")
        except TimeoutError:
            return Outcome.failure("timeout", f"GET {url} did not answer within 30s")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome.failure("network", f"GET {url} failed: {type(exc).__name__}: {exc}")
        except ValueError as exc:  # not a URL aiohttp can use (e.g. an empty host label)
            return Outcome.failure("config", f"GET {url}: invalid URL: {exc}")
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
        with it, each hop's connection passes the egress policy like the first."""
        timeout = self._timeouts.get(limit)
        if timeout is None:
            timeout = self._timeouts[limit] = aiohttp.ClientTimeout(total=limit)
        async with self._client().request(
            method,
            url,
            params=request.get("query"),
            data=data,
            headers=headers,
            timeout=timeout,
            allow_redirects=follow,
            max_redirects=MAX_REDIRECTS,
        ) as resp:
            raw = await resp.read()
            headers = {str(k): v for k, v in resp.headers.items()}
            return resp.status, headers, raw, resp.content_type


def follows(action: HttpCall, service: Service | None) -> bool:
    """Whether a step's call follows redirects: as the step says, else as its service says."""
    if action.follow_redirects is not None:
        return action.follow_redirects
    return service is not None and service.follow_redirects


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
