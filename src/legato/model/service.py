"""The service directory's entry: where a microservice lives and how to call it."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

from legato.errors import DefinitionError, Problem
from legato.model.fields import Field, fields_to_dicts
from legato.model.reader import Reader, join, read_fields
from legato.model.retries import STEP_KEYS, check_pace, policy_to_dict, read_setting
from legato.model.workflow import DEFAULT_RETRY, RetryPolicy

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
    # How its steps retry when neither they nor their workflow say (None: the built-in default).
    retry: RetryPolicy | None = None

    def url(self, path: str) -> str:
        return join_path(self.base_url, path)

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
        if self.retry is not None:
            out["retry"] = policy_to_dict(self.retry)
        if self.inputs:
            out["inputs"] = fields_to_dicts(self.inputs)
        if self.outputs:
            out["outputs"] = fields_to_dicts(self.outputs)
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = "", strict: bool = True) -> Service:
        """`strict=False` for entries already stored: an entry that later, stricter checks
        refuse still loads (its calls fail) rather than stop the process starting."""
        problems: list[Problem] = []
        service = read_service(data, path, problems, strict)
        if problems or service is None:
            raise DefinitionError(problems or [Problem(path, "is not a service")], "service")
        return service


def join_path(url: str, path: str | None) -> str:
    """A base URL and a step's path: the path goes before the base URL's query and fragment."""
    if not path:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.rstrip("/") + "/" + path.lstrip("/")
    joined = parts.path.rstrip("/") + "/" + path.lstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, joined, parts.query, parts.fragment))


def check_path(path: Any) -> str | None:
    """Why a step's (rendered) path may not go under a base URL, or None. A dot segment would
    leave the base path, carrying the service's credentials to another route of its host: clients
    and servers normalise such segments, and servers disagree on what one is (`..;` is `..` to
    Tomcat, Jetty and Spring; `..%00`, `%c0%ae` or fullwidth dots to others). So the path is
    percent-decoded until it no longer changes, then each segment (split at `/` and `\\`) is
    taken without its `;` parameters and NULs, NFKC-normalised and stripped, and must not be `.`
    or `..`. A decoded path must be UTF-8 and hold no control character."""
    if not isinstance(path, str) or not path:
        return None
    route = path.split("?", 1)[0].split("#", 1)[0]
    decoded = route
    for _ in range(_MAX_DECODES):
        raw = unquote_to_bytes(decoded)
        try:
            once = raw.decode("utf-8")
        except UnicodeDecodeError:
            return f"must be UTF-8 once percent-decoded (got {path!r})"
        if once == decoded:
            break
        decoded = once
    else:
        return f"is percent-encoded too many times over (got {path!r})"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in decoded + path):
        return f"must not hold NUL or control characters (got {path!r})"
    for segment in re.split(r"[/\\]", decoded):
        name = unicodedata.normalize("NFKC", segment.split(";", 1)[0].replace("\x00", "")).strip()
        if name in (".", ".."):
            return (
                f"must not hold a '.' or '..' segment, also encoded or with ';' parameters "
                f"(got {path!r}): servers would take the call to another route of the host"
            )
    return None


def check_url_path(url: Any) -> str | None:
    """`check_path` for the path of a full (rendered) URL: a `url:` with a dot segment would send
    the step's headers to a route the URL does not name."""
    if not isinstance(url, str):
        return None
    try:
        path = urlsplit(url).path
    except ValueError:
        return None  # reported as an invalid URL where it is called
    return check_path(path)


_MAX_DECODES = 8  # more than any server decodes; a path still changing after that is refused


def check_url(url: str, strict: bool = True) -> str | None:
    """Whether a base URL can be called; `strict` (not for entries already stored) also refuses
    what no call can use: a bad port, no host, a template that is not `{{ secrets.NAME }}`."""
    if strict and (err := check_secret_refs(url)):
        return err
    plain = _SECRET_REF.sub("s", url)
    try:
        parts = urlsplit(plain)
        port = parts.port if strict else None  # raises for a port out of range or not a number
    except ValueError as exc:  # e.g. "http://[" (an unclosed IPv6 bracket), port 99999
        return f"is not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an absolute http:// or https:// URL"
    if not strict:
        return None
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "port 0 is not a port to call"
    if any(c in plain for c in "\r\n\x00 "):
        return "must not contain spaces or control characters"
    return None


# A header's name is an HTTP token (RFC 9110 5.1); its value one line of text.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
# A service may name a secret only as `{{ secrets.NAME }}`, whole: it is not a template.
_SECRET_REF = re.compile(r"\{\{\s*secrets\.[A-Za-z_][A-Za-z0-9_]{0,127}\s*\}\}")


def check_secret_refs(text: str) -> str | None:
    rest = _SECRET_REF.sub("", text)
    if "{{" in rest or "{%" in rest or "}}" in rest:
        return (
            "may name a secret only as {{ secrets.NAME }} (a name of letters, digits and '_', "
            "not starting with a digit, and no filter)"
        )
    return None


_NATIVE_ONLY = {"headers", "token", "timeout", "concurrency", "follow_redirects"}


def _machinery_shaped(data: dict[str, Any], path: str) -> bool:
    """Inline in a services-in-order document, or {name, inputs/outputs} with nothing native."""
    if path.startswith("services["):
        return True
    return bool({"inputs", "outputs"} & data.keys()) and not _NATIVE_ONLY & data.keys()


def read_service(
    data: Any, path: str, problems: list[Problem], strict: bool = True
) -> Service | None:
    """Accepts `base_url` or the services-in-order form's `address`."""
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    before = len(problems)
    name = r.get("name", str)
    if name is not None and not SERVICE_NAME.fullmatch(name):
        r.problem("name", "must be 1-128 letters, digits, '_', '.' or '-'")
    key = "address" if r.has("address") and not r.has("base_url") else "base_url"
    if key == "base_url" and not r.has("base_url") and _machinery_shaped(data, path):
        key = "address"  # missing: named as the document's own form names it
    base_url = r.get(key, str)
    if base_url is not None and (err := check_url(base_url, strict)):
        r.problem(key, err)
    headers = r.get("headers", dict, {})
    for k, v in headers.items():
        if not strict:
            if not isinstance(v, str):
                r.problem(f"headers.{k}", "must be a string")
        elif not HEADER_NAME.fullmatch(str(k)):
            r.problem(
                f"headers.{k!r}", "is not a header name (letters, digits and !#$%&'*+.^_`|~-)"
            )
        elif not isinstance(v, str):
            r.problem(f"headers.{k}", "must be a string")
        elif any(c in v for c in "\r\n\x00"):
            r.problem(f"headers.{k}", "must be one line (no CR, LF or NUL)")
        elif err := check_secret_refs(v):
            r.problem(f"headers.{k}", err)
    token = r.get("token", str, None)
    if token is not None and strict:
        if err := check_secret_refs(token):
            r.problem("token", err)
        elif not token or any(c in _SECRET_REF.sub("s", token) for c in "\r\n\x00 "):
            r.problem("token", "must be non-empty, without spaces or control characters")
    timeout = r.duration("timeout", DEFAULT_TIMEOUT)
    if timeout is not None and timeout <= 0:
        r.problem("timeout", "must be positive")
    concurrency = r.get("concurrency", int, DEFAULT_CONCURRENCY)
    if concurrency < 1:
        r.problem("concurrency", "must be at least 1")
    description = r.get("description", str, "")
    follow_redirects = r.get("follow_redirects", bool, False)
    retry = read_setting(r.raw("retry"), r.at("retry"), problems)
    if retry is not None:
        check_pace(replace(DEFAULT_RETRY, **retry), r.at("retry"), STEP_KEYS, problems)
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
        retry=None
        if retry is None
        else replace(DEFAULT_RETRY, **retry, fallback=False, given=frozenset(retry)),
    )


def service_entries(data: Any, path: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """The service mappings of a document: one service (machinery keeps one per file), a list of
    them, or `{"services": [...]}`; each checked, every problem recorded with its place."""
    items: list[tuple[Any, str]] = [(data, path)]
    listing = isinstance(data, dict) and isinstance(data.get("services"), list)
    if listing and not {"name", "address", "base_url"} & data.keys():
        data, path = data["services"], join(path, "services")
    if isinstance(data, list):
        items = [(item, join(path, i)) for i, item in enumerate(data)]
    found: list[dict[str, Any]] = []
    for item, at in items:
        before = len(problems)
        if not isinstance(item, dict):
            problems.append(Problem(at, "must be a service {name, address, inputs, outputs}"))
        elif read_service(item, at, problems) is not None and len(problems) == before:
            found.append(item)
    return found
