"""Python clients for a Legato server: `Client` (blocking) and `AsyncClient`, with the same verbs.

Each verb is written once, as the request it makes; the two classes differ only in how they send it.
Errors come back as `ApiError` (with the server's `problems`), and 404 and 409 are also `NotFound` and
`Conflict`, so code that catches those works against the embedded engine and a server alike.

    with Client("http://127.0.0.1:8080", token="...") as legato:
        run = legato.start("take-order", {"order_id": "A-1"}, wait=30)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson

from legato.errors import Conflict, LegatoError, NotFound
from legato.model.service import Service
from legato.model.workflow import Workflow

DEFAULT_URL = "http://127.0.0.1:8080"
ACTIVE = ("pending", "running", "waiting")
R = TypeVar("R")


class ApiError(LegatoError):
    """The server refused a request; `problems` lists `{path, message}` for each field at fault."""

    def __init__(self, status: int, body: Any) -> None:
        body = body if isinstance(body, dict) else {"message": str(body)}
        self.status = status
        self.kind = str(body.get("error", "error"))
        self.problems: list[dict[str, str]] = list(body.get("problems") or [])
        self.body = body
        message = str(body.get("message") or f"HTTP {status}")
        super().__init__(f"{message} (HTTP {status})")


class ApiNotFound(ApiError, NotFound):
    pass


class ApiConflict(ApiError, Conflict):
    pass


def _raise_for(status: int, content: bytes) -> None:
    try:
        body = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        body = {"message": content[:500].decode(errors="replace")}
    cls = {404: ApiNotFound, 409: ApiConflict}.get(status, ApiError)
    raise cls(status, body)


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    pick: str | None = None  # answer with this key of the JSON body
    timeout: float | None = None  # on top of the client's, for long waits

    def send_args(self, timeout: float | None) -> dict[str, Any]:
        """httpx's `request()` arguments; a long wait adds its length to the client's timeout."""
        return {
            "method": self.method,
            "url": self.path,
            "json": self.json,
            "content": self.content,
            "params": self.params,
            "headers": self.headers,
            "timeout": timeout + self.timeout if timeout is not None and self.timeout else timeout,
        }

    def result(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            _raise_for(response.status_code, response.content)
        if response.status_code == 204 or not response.content:
            return None
        if not response.headers.get("content-type", "").startswith("application/json"):
            return response.text
        body = orjson.loads(response.content)
        return body[self.pick] if self.pick else body


def _definition(document: str | bytes | Path | dict[str, Any] | Workflow) -> _Request:
    if isinstance(document, Workflow):
        document = document.spec
    if isinstance(document, Path):
        data = document.read_bytes()
        kind = "application/json" if document.suffix == ".json" else "application/yaml"
        return _Request("POST", "/api/workflows", content=data, headers={"Content-Type": kind})
    if isinstance(document, dict):
        return _Request("POST", "/api/workflows", json=document)
    # A text may be JSON or YAML (and YAML may start with "{"): the server tells them apart.
    data = document.encode() if isinstance(document, str) else document
    return _Request("POST", "/api/workflows", content=data, headers={"Content-Type": "text/plain"})


def _service(service: Service | dict[str, Any]) -> dict[str, Any]:
    return service.to_dict() if isinstance(service, Service) else dict(service)


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _key(idempotency_key: str | None) -> dict[str, str]:
    return {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _run_filter(runs: dict[str, Any]) -> dict[str, Any]:
    """A bulk action's filter as the API reads it (a `datetime` as ISO 8601, `all_runs` as all)."""
    body = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in _params(**runs).items()}
    if body.pop("all_runs", False):
        body["all"] = True
    return body


class _Verbs(Generic[R]):
    """Every verb, as the request it sends; `_send` is the sync or async transport."""

    def _send(self, request: _Request) -> R:
        raise NotImplementedError

    def health(self) -> R:
        return self._send(_Request("GET", "/healthz"))

    def services(self) -> R:
        return self._send(_Request("GET", "/api/services", pick="services"))

    def service(self, name: str) -> R:
        return self._send(_Request("GET", f"/api/services/{_q(name)}"))

    def add_service(self, service: Service | dict[str, Any], *, replace: bool = False) -> R:
        """Add a service; with `replace`, add or replace it (PUT)."""
        body = _service(service)
        if replace:
            return self._send(
                _Request("PUT", f"/api/services/{_q(str(body.get('name')))}", json=body)
            )
        return self._send(_Request("POST", "/api/services", json=body))

    def delete_service(self, name: str) -> R:
        return self._send(_Request("DELETE", f"/api/services/{_q(name)}"))

    def secrets(self) -> R:
        """The secrets' names and sources (`env` or `store`); the API never answers a value."""
        return self._send(_Request("GET", "/api/secrets", pick="secrets"))

    def set_secret(self, name: str, value: str) -> R:
        """Set a secret that templates read as `{{ secrets.NAME }}`."""
        return self._send(_Request("PUT", f"/api/secrets/{_q(name)}", json={"value": value}))

    def delete_secret(self, name: str) -> R:
        return self._send(_Request("DELETE", f"/api/secrets/{_q(name)}"))

    def apply(self, document: str | bytes | Path | dict[str, Any] | Workflow) -> R:
        """Register a definition: a YAML/JSON text or file, a parsed mapping, or a DSL workflow."""
        return self._send(_definition(document))

    def workflows(self) -> R:
        return self._send(_Request("GET", "/api/workflows", pick="workflows"))

    def workflow(self, name: str, version: int | None = None) -> R:
        if version is None:
            return self._send(_Request("GET", f"/api/workflows/{_q(name)}"))
        return self._send(_Request("GET", f"/api/workflows/{_q(name)}/versions/{version}"))

    def graph(self, name: str, version: int | None = None) -> R:
        params = _params(version=version)
        return self._send(_Request("GET", f"/api/workflows/{_q(name)}/graph", params=params))

    def start(
        self,
        workflow: str,
        input: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        run_id: str | None = None,
    ) -> R:
        """Start a run; with `wait`, answer when it ends (or after `wait` seconds) with the whole run.

        Sent again with the same `idempotency_key` (and the same arguments), it answers the run the
        first start made instead of making another: retrying a start that timed out is safe.
        `run_id` (32 lowercase hex digits, the 13th not `f`: a UUID's hex) names the run; a second
        start with it is a Conflict."""
        body = _params(input=input or {}, version=version, id=run_id)
        return self._send(
            _Request(
                "POST",
                f"/api/workflows/{_q(workflow)}/runs",
                json=body,
                params=_params(wait=wait),
                headers=_key(idempotency_key),
                timeout=wait,
            )
        )

    def trigger(
        self,
        workflow: str,
        conf: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> R:
        """Start a run by hand; `conf` is its input."""
        return self._send(
            _Request(
                "POST",
                f"/api/workflows/{_q(workflow)}/trigger",
                json={"conf": conf or {}},
                headers=_key(idempotency_key),
            )
        )

    def tags(self) -> R:
        """Each tag with its workflows: `[{"tag": ..., "workflows": [...]}]`."""
        return self._send(_Request("GET", "/api/tags", pick="tags"))

    def schedules(self) -> R:
        """Scheduled workflows with their state and next fire time."""
        return self._send(_Request("GET", "/api/schedules", pick="schedules"))

    def triggers(self) -> R:
        """The server's broker triggers: `{"subscribed", "messages", "rejected"}`."""
        return self._send(_Request("GET", "/api/triggers"))

    def pause(self, workflow: str) -> R:
        return self._send(_Request("POST", f"/api/schedules/{_q(workflow)}/pause"))

    def unpause(self, workflow: str) -> R:
        return self._send(_Request("POST", f"/api/schedules/{_q(workflow)}/unpause"))

    def send_event(
        self,
        workflow: str,
        data: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> R:
        """machinery's event form; with `wait` (at most 60 s), the ended run if it ends by then."""
        return self._send(
            _Request(
                "POST",
                f"/e/{_q(workflow)}",
                json={"data": data},
                headers=_key(idempotency_key),
                params=_params(wait=wait),
                timeout=wait,
            )
        )

    def runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tag: str | None = None,
    ) -> R:
        """One page: `{"runs": [...], "next_cursor": ...}`, newest first."""
        params = _params(workflow=workflow, status=status, limit=limit, cursor=cursor, tag=tag)
        return self._send(_Request("GET", "/api/runs", params=params))

    def run(self, run_id: str, *, wait: float | None = None) -> R:
        """A run with its steps; with `wait`, once it ends or after `wait` seconds."""
        return self._send(
            _Request("GET", f"/api/runs/{_q(run_id)}", params=_params(wait=wait), timeout=wait)
        )

    def notifications(self, run_id: str) -> R:
        """What became of each notification about a run."""
        return self._send(
            _Request("GET", f"/api/runs/{_q(run_id)}/notifications", pick="notifications")
        )

    def logs(
        self,
        run_id: str,
        step: str | None = None,
        *,
        attempt: int | None = None,
        cursor: int | None = None,
    ) -> R:
        """One page of what a run's steps logged: `{"logs": [...], "next_cursor": ...}`, in the
        order written; each line has ts, step, attempt, level, source and message."""
        params = _params(step=step, attempt=attempt, after=cursor)
        return self._send(_Request("GET", f"/api/runs/{_q(run_id)}/logs", params=params))

    def cancel(self, run_id: str) -> R:
        return self._send(_Request("POST", f"/api/runs/{_q(run_id)}/cancel"))

    def retry(self, run_id: str) -> R:
        return self._send(_Request("POST", f"/api/runs/{_q(run_id)}/retry"))

    def audit(
        self,
        *,
        since: str | None = None,
        token: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> R:
        """One page of the audit log (admin): `{"entries": [...], "next_cursor": ...}`, newest
        first; `since` is an ISO time or a duration ago (`1h`)."""
        params = _params(since=since, token=token, limit=limit, cursor=cursor)
        return self._send(_Request("GET", "/api/audit", params=params))

    def cancel_runs(self, **runs: Any) -> R:
        """Cancel every run a filter matches, with their sub-workflow runs: `{"count", "ids"}`.
        Filter by `workflow`, `status`, `tag`, `created_after`, `created_before` (epoch seconds or
        ISO 8601); nothing given is refused unless `all_runs=True`."""
        return self._send(_Request("POST", "/api/runs:cancel", json=_run_filter(runs)))

    def retry_runs(self, **runs: Any) -> R:
        """Retry every failed or cancelled run a filter matches (as `cancel_runs` filters)."""
        return self._send(_Request("POST", "/api/runs:retry", json=_run_filter(runs)))


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Unreachable(LegatoError):
    """No answer from the server: what the request asked may or may not have been done."""


def _unreachable(url: str, exc: Exception) -> LegatoError:
    return Unreachable(f"cannot reach Legato at {url}: {exc}")


class Client(_Verbs[Any]):
    """A blocking client; use as a context manager or call `close()`."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float | None = 30.0
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout)

    def _send(self, request: _Request) -> Any:
        try:
            response = self._http.request(**request.send_args(self.timeout))
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return request.result(response)

    def wait(self, run_id: str, timeout: float | None = None, *, poll: float = 5.0) -> Any:
        """Wait for a run to end (long polls of `poll` seconds); the run as it is after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            run = self.run(run_id, wait=left)
            if run["status"] not in ACTIVE or (deadline is not None and left <= 0):
                return run

    def iter_runs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every run matching the filters, newest first, fetching page after page."""
        cursor = None
        while True:
            page = self.runs(cursor=cursor, **filters)
            yield from page["runs"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Verbs[Awaitable[Any]]):
    """The same verbs as `Client`, as coroutines; use `async with` or `await close()`."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float | None = 30.0
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token), timeout=timeout)

    async def _request(self, request: _Request) -> Any:
        try:
            response = await self._http.request(**request.send_args(self.timeout))
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return request.result(response)

    def _send(self, request: _Request) -> Awaitable[Any]:
        return self._request(request)

    async def wait(self, run_id: str, timeout: float | None = None, *, poll: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = poll if deadline is None else max(0.0, min(poll, deadline - loop.time()))
            run = await self.run(run_id, wait=left)
            if run["status"] not in ACTIVE or (deadline is not None and left <= 0):
                return run

    async def iter_runs(self, **filters: Any) -> AsyncIterator[dict[str, Any]]:
        cursor = None
        while True:
            page = await self.runs(cursor=cursor, **filters)
            for run in page["runs"]:
                yield run
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
