"""`{{ secrets.NAME }}` in templates: the decider renders a reference, never the value (pure).

A template sees `secrets` as a mapping whose every entry renders to a marker `~~secret.NAME.TAG~~`,
so the request the decider stores holds only the name. TAG is random and fresh for each rendering of
a request (`new_tag`) and travels with it (`TAG_KEY`): the HTTP executor swaps a marker for the value
just before sending (`substitute`) only when it carries that request's own tag and names a secret
that the step's own template writes down (`names_in`). Text arriving through run input, a service's
reply or another step cannot know a tag made after it arrived, so a marker smuggled in that way stays
inert text. The marker is made of URL-safe characters, so it survives `urlencode` and the path; a
filter applied to a secret (`| upper`) applies to the marker, not the value, so a secret is
substituted whole and as is, or not at all.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
from jinja2 import nodes
from yarl import URL

from legato.expressions import ENV, Template

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# A marker rendered outside a request (a run's output, a sub-workflow's input) has no tag: never sent.
MARKER = re.compile(r"~~secret\.([A-Za-z_][A-Za-z0-9_]{0,127})(?:\.([0-9a-f]{16}))?~~")
TAG_KEY = "secret_tag"  # the request's key holding its tag (never stored: see masking)
# A service's base_url, headers and token may say `{{ secrets.NAME }}` (and nothing fancier).
SERVICE_REF = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]{0,127})\s*\}\}")


def marker(name: str, tag: str | None = None) -> str:
    return f"~~secret.{name}.{tag}~~" if tag else f"~~secret.{name}~~"


def new_tag() -> str:
    return os.urandom(8).hex()


class SecretRefs(dict[str, str]):
    """Every key is present and renders to its marker; there is nothing to list or iterate."""

    def __init__(self, tag: str | None = None, *, fresh: bool = False) -> None:
        super().__init__()
        self._tag = tag
        self._fresh = fresh  # make a tag when the first marker is (most renders make none)

    @property
    def tag(self) -> str | None:
        if self._tag is None and self._fresh:
            self._tag = new_tag()
        return self._tag

    @property
    def made(self) -> str | None:
        """The tag, if a marker was rendered with one."""
        return self._tag

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and NAME.fullmatch(key) is not None

    def __missing__(self, key: str) -> str:
        if not NAME.fullmatch(key):
            raise KeyError(key)
        return marker(key, self.tag)


SECRETS = SecretRefs()


def _is_secrets(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "secrets"


@functools.lru_cache(maxsize=4096)
def _names_in_text(text: str) -> frozenset[str]:
    if "secrets" not in text:
        return frozenset()
    try:
        tree = ENV.parse(text)
    except Exception:  # compiled once already; a string that does not parse names nothing
        return frozenset()
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_secrets(node.node):
            found.add(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and _is_secrets(node.node)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found.add(node.arg.value)
    return frozenset(found)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def names_in(templates: Iterable[Template | None]) -> frozenset[str]:
    """The secrets that these templates name literally (`secrets.X`, `secrets['X']`)."""
    found: set[str] = set()
    for t in templates:
        if t is not None:
            for text in _strings(t.source):
                found |= _names_in_text(text)
    return frozenset(found)


def wanted(value: Any, allowed: frozenset[str], tag: str | None) -> set[str]:
    """The allowed names whose markers with this tag occur in `value`'s strings (not its keys)."""
    found: set[str] = set()
    if not tag:
        return found
    for text in _values(value):
        if "~~secret." in text:
            found.update(n for n, t in MARKER.findall(text) if n in allowed and t == tag)
    return found


def _values(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _values(v)
    elif isinstance(value, list):
        for v in value:
            yield from _values(v)


def substitute(value: Any, values: Mapping[str, str], tag: str | None) -> Any:
    """`value` with the markers of `values`' names carrying `tag` replaced by the secrets
    themselves; dict keys are left as they are (a secret is never sent as a key)."""
    if not tag:
        return value
    if isinstance(value, str):
        if "~~secret." not in value:
            return value
        return MARKER.sub(
            lambda m: values.get(m.group(1), m.group(0)) if m.group(2) == tag else m.group(0),
            value,
        )
    if isinstance(value, dict):
        return {k: substitute(v, values, tag) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, values, tag) for v in value]
    return value


def service_names(*texts: str | None) -> set[str]:
    return {n for t in texts if t for n in SERVICE_REF.findall(t)}


def service_substitute(text: str, values: Mapping[str, str]) -> str:
    return SERVICE_REF.sub(lambda m: values.get(m.group(1), m.group(0)), text)


# Credentials shorter than this are not scrubbed out of replies: replacing every "admin" or "body" in
# a service's reply would silently change the data later steps read. They are still never stored
# where Legato itself writes them (requests, URLs, headers: see masking).
SCRUB_MIN = 8


def encodings(secret: str) -> set[str]:
    """The forms a service may echo a secret back in: as is, percent-encoded the ways a query or a
    path encodes it (`+` for a space included), and JSON-escaped."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret, safe="/"),
        quote_plus(secret, safe=""),
        quote_plus(secret, safe="/"),
        orjson.dumps(secret).decode()[1:-1],
    }
    try:  # exactly as aiohttp (yarl) puts it in a query and a path
        forms.add(URL.build(query={"q": secret}).raw_query_string[2:])
        forms.add(URL.build(path="/" + secret).raw_path[1:])
    except (ValueError, TypeError):
        pass
    return forms


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """`value` with every occurrence of these credentials (of `SCRUB_MIN` characters or more, in
    any of their `encodings`) inside its strings as `***`: a service that echoes its request must
    not get a secret stored in the step's output. Keys and non-strings are left as they are."""
    found = sorted(
        {f for s in secrets if len(s) >= SCRUB_MIN for f in encodings(s) if len(f) >= SCRUB_MIN},
        key=len,
        reverse=True,
    )
    if not found:
        return value
    pattern = re.compile("|".join(re.escape(s) for s in found))

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub("***", v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)
