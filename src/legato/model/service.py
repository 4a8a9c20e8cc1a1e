"""The service directory's entry: where a microservice lives and how to call it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from legato.errors import DefinitionError, Problem
from legato.model.fields import Field, fields_to_dicts
from legato.model.reader import Reader, read_fields

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONCURRENCY = 100


@dataclass(frozen=True, slots=True)
class Service:
    """Steps name a service instead of a URL, so moving a service is one directory change."""

    name: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY
    inputs: tuple[Field, ...] = ()
    outputs: tuple[Field, ...] = ()
    description: str = ""
    # Follow 3xx answers (each hop checked by the egress policy); otherwise a 3xx is the answer.
    follow_redirects: bool = False

    def url(self, path: str) -> str:
        if not path:
            return self.base_url
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "base_url": self.base_url}
        if self.description:
            out["description"] = self.description
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.token:
            out["token"] = self.token
        out["timeout"] = self.timeout
        out["concurrency"] = self.concurrency
        if self.follow_redirects:
            out["follow_redirects"] = True
        if self.inputs:
            out["inputs"] = fields_to_dicts(self.inputs)
        if self.outputs:
            out["outputs"] = fields_to_dicts(self.outputs)
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Service:
        problems: list[Problem] = []
        service = read_service(data, path, problems)
        if problems or service is None:
            raise DefinitionError(problems or [Problem(path, "is not a service")], "service")
        return service


def check_url(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "http://[" (an unclosed IPv6 bracket)
        return f"is not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an absolute http:// or https:// URL"
    return None


def read_service(data: Any, path: str, problems: list[Problem]) -> Service | None:
    """Accepts `base_url` or the services-in-order form's `address`."""
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    before = len(problems)
    name = r.get("name", str)
    if name is not None and not SERVICE_NAME.fullmatch(name):
        r.problem("name", "must be 1-128 letters, digits, '_', '.' or '-'")
    key = "address" if r.has("address") and not r.has("base_url") else "base_url"
    base_url = r.get(key, str)
    if base_url is not None and (err := check_url(base_url)):
        r.problem(key, err)
    headers = r.get("headers", dict, {})
    for k, v in headers.items():
        if not isinstance(v, str):
            r.problem(f"headers.{k}", "must be a string")
    token = r.get("token", str, None)
    timeout = r.duration("timeout", DEFAULT_TIMEOUT)
    if timeout is not None and timeout <= 0:
        r.problem("timeout", "must be positive")
    concurrency = r.get("concurrency", int, DEFAULT_CONCURRENCY)
    if concurrency < 1:
        r.problem("concurrency", "must be at least 1")
    description = r.get("description", str, "")
    follow_redirects = r.get("follow_redirects", bool, False)
    inputs = read_fields(r.raw("inputs"), r.at("inputs"), problems)
    outputs = read_fields(r.raw("outputs"), r.at("outputs"), problems)
    r.done()
    if len(problems) > before:
        return None
    return Service(
        name=name,
        base_url=base_url,
        headers=dict(headers),
        token=token,
        timeout=timeout or DEFAULT_TIMEOUT,
        concurrency=concurrency,
        inputs=inputs,
        outputs=outputs,
        description=description,
        follow_redirects=follow_redirects,
    )
