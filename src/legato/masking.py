"""Hides credentials wherever Legato shows or stores a request: one policy for the API, the UI, stored
step requests and error messages (pure).

- A header's value is shown only when its name is on `SHOWN_HEADERS` (names that never carry a
  credential); every other header shows `***`. An allow-list, because a deny-list misses the next
  `X-Api-Key`-like name.
- A URL keeps its scheme, host, path and harmless query parameters; the password of its userinfo and
  the values of query parameters named like credentials (`SECRET_PARAM`) show `***`.
- A reference to a secret (`{{ secrets.NAME }}`, see `legato.secret_refs`) shows `***`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import orjson

from legato.model.service import Service
from legato.secret_refs import MARKER, TAG_KEY

MASK = "***"

# Lower-case names whose values are shown; every other header is masked.
SHOWN_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-encoding",
        "content-language",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "idempotency-key",
        "if-match",
        "if-none-match",
        "last-modified",
        "legato-event-key",
        "legato-event-type",
        "legato-result-bucket",
        "legato-result-key",
        "legato-run-id",
        "legato-step",
        "pragma",
        "retry-after",
        "server",
        "traceparent",
        "tracestate",
        "user-agent",
        "vary",
        "x-correlation-id",
        "x-request-id",
    }
)

# Query parameters whose name says they carry a credential (matched anywhere in the name, any case):
# api_key, apikey, access_token, token, password, passwd, secret, client_secret, sig, signature,
# X-Amz-Signature, X-Amz-Credential, key, auth, session, code (OAuth), jwt...
SECRET_PARAM = re.compile(
    r"key|token|pass|pwd|secret|sig|auth|credential|session|cookie|jwt|^code$", re.IGNORECASE
)

# Narrower: names whose values are scrubbed out of what a service answers (see secret_refs.scrub).
# Not every name SECRET_PARAM masks: scrubbing `sort_key=created_at` or `page_token` would rewrite a
# reply's data, so only names that are credentials as a whole.
CREDENTIAL_NAME = re.compile(
    r"^(?:x-)?(?:api[-_]?key|apikey|access[-_]?key|secret[-_]?key|private[-_]?key|key"
    r"|(?:access|refresh|id|auth|bearer|session|csrf|xsrf)?[-_]?token|client[-_]?secret|secret"
    r"|password|passwd|pwd|pass|signature|sig|amz-signature|amz-credential|amz-security-token"
    r"|credentials?|auth|authorization|proxy-authorization|jwt|session(?:[-_]?id)?|jsessionid"
    r"|cookie)$",
    re.IGNORECASE,
)

# The scheme's length is bounded: unbounded, a long run of letters with no `://` made every
# position scan to its end (quadratic: a 1 MB failure message held the server for minutes).
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s'\"<>]+")


def mask_markers(text: str) -> str:
    """Every secret reference in `text` as `***`."""
    return MARKER.sub(MASK, text) if "~~secret." in text else text


def mask_url(url: str) -> str:
    """The URL with its userinfo password, credential-like query and fragment values and path
    parameters (`;jsessionid=`) as `***`; everything else exactly as written (`sqlite:////x.db`
    keeps its four slashes)."""
    url = mask_markers(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can split: show nothing of it that could be a secret
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    out = f"{parts.scheme}:" if parts.scheme else ""
    if url[len(out) :].startswith("//"):
        out += "//" + netloc
    out += _PATH_PARAM.sub(_mask_param, parts.path)
    if parts.query or "?" in url.split("#", 1)[0]:
        out += "?" + "&".join(_mask_pair(p) for p in parts.query.split("&"))
    if parts.fragment or "#" in url:
        out += "#" + "&".join(_mask_pair(p) for p in parts.fragment.split("&"))
    return out


_PATH_PARAM = re.compile(r";([^;/=]*)=([^;/]*)")


def _mask_param(m: re.Match[str]) -> str:
    return f";{m.group(1)}={MASK}" if SECRET_PARAM.search(m.group(1)) else m.group(0)


def _mask_pair(pair: str) -> str:
    """One `name=value` of a query, as it was written unless its name is credential-like."""
    name, eq, _ = pair.partition("=")
    return f"{name}={MASK}" if eq and SECRET_PARAM.search(unquote_plus(name)) else pair


def mask_headers(headers: Any) -> Any:
    if not isinstance(headers, dict):
        return headers
    return {
        k: mask_markers(v) if str(k).lower() in SHOWN_HEADERS and isinstance(v, str) else MASK
        for k, v in headers.items()
    }


def mask_query(query: Any) -> Any:
    if not isinstance(query, dict):
        return query
    return {k: MASK if SECRET_PARAM.search(str(k)) else _deep(v) for k, v in query.items()}


def mask_text(text: str) -> str:
    """A message with every URL in it masked (errors name the URL they called)."""
    text = mask_markers(text)
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)


def _deep(value: Any) -> Any:
    """Secret references inside any JSON value (a body) as `***`; the value itself (not a copy)
    when it has none, which one C-speed serialisation tells for a big body."""
    if isinstance(value, dict | list):
        try:
            if b"~~secret." not in orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS):
                return value
        except TypeError:
            pass
    return _walk(value)


def _walk(value: Any) -> Any:
    if isinstance(value, str):
        return mask_markers(value)
    if isinstance(value, dict):
        return {k: _walk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v) for v in value]
    return value


def mask_request(request: Any) -> Any:
    """A step's request as it may be stored and shown: what is sent, without its credentials."""
    if not isinstance(request, dict):
        return request
    out: dict[str, Any] = {}
    for k, v in request.items():
        if k == TAG_KEY:  # made for one sending; not part of what was asked
            continue
        if k == "url" and isinstance(v, str):
            out[k] = mask_url(v)
        elif k == "headers":
            out[k] = mask_headers(v)
        elif k == "query":
            out[k] = mask_query(v)
        elif k == "poll" and isinstance(v, dict):
            out[k] = {
                pk: mask_url(pv) if pk == "url" and isinstance(pv, str) else pv
                for pk, pv in v.items()
                if pk != TAG_KEY
            }
        else:
            out[k] = _deep(v)
    return out


def mask_error(error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    return {k: mask_text(v) if isinstance(v, str) else v for k, v in error.items()}


def mask_output(output: Any) -> Any:
    """An HTTP step's output (status, headers, body) with its response headers masked."""
    if isinstance(output, dict) and set(output) == {"status", "headers", "body"}:
        return {**output, "headers": mask_headers(output["headers"])}
    return output


def mask_service(service: Service) -> Service:
    """A directory entry as shown: URL masked, headers off the allow-list and the token as `***`."""
    return replace(
        service,
        base_url=mask_url(service.base_url),
        headers=mask_headers(service.headers),
        token=MASK if service.token else service.token,
    )


def mask_definition(value: Any, key: str = "") -> Any:
    """A workflow's definition as shown: literal credentials in its URLs, headers, queries and
    tokens as `***` (a definition should name `{{ secrets.NAME }}` instead of holding them)."""
    if isinstance(value, str):
        if key in ("url", "base_url", "address"):
            return mask_url(value)
        return MASK if key == "token" and value else value
    if isinstance(value, dict):
        if key == "headers":
            return mask_headers(value)
        if key == "query":
            return mask_query(value)
        return {k: mask_definition(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_definition(v, key) for v in value]
    return value
