"""`{{ secrets.NAME }}` in templates: the decider renders a reference, never the value (pure).

A template sees `secrets` as a mapping whose every entry renders to the marker `~~secret.NAME~~`, so
the request the decider stores holds only the name. The HTTP executor swaps each marker for the value
just before sending (`substitute`), and only for names that the step's own definition writes down
(`names_in`): a marker smuggled in through run input or a service's reply resolves to nothing. The
marker is made of URL-safe characters, so it survives `urlencode` and the path; a filter applied to a
secret (`| upper`) applies to the marker, not the value, so a secret is substituted whole and as is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import nodes

from legato.expressions import ENV, Template

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MARKER = re.compile(r"~~secret\.([A-Za-z_][A-Za-z0-9_]{0,127})~~")
# A service's base_url, headers and token may say `{{ secrets.NAME }}` (and nothing fancier).
SERVICE_REF = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]{0,127})\s*\}\}")


def marker(name: str) -> str:
    return f"~~secret.{name}~~"


class SecretRefs(dict[str, str]):
    """Every key is present and renders to its marker; there is nothing to list or iterate."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and NAME.fullmatch(key) is not None

    def __missing__(self, key: str) -> str:
        if not NAME.fullmatch(key):
            raise KeyError(key)
        return marker(key)


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


def wanted(value: Any, allowed: frozenset[str]) -> set[str]:
    """The allowed names whose markers occur in `value`."""
    found: set[str] = set()
    for text in _strings(value):
        if "~~secret." in text:
            found.update(n for n in MARKER.findall(text) if n in allowed)
    return found


def substitute(value: Any, values: Mapping[str, str]) -> Any:
    """`value` with the markers of `values`' names replaced by the secrets themselves."""
    if isinstance(value, str):
        if "~~secret." not in value:
            return value
        return MARKER.sub(lambda m: values.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: substitute(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, values) for v in value]
    return value


def service_names(*texts: str | None) -> set[str]:
    return {n for t in texts if t for n in SERVICE_REF.findall(t)}


def service_substitute(text: str, values: Mapping[str, str]) -> str:
    return SERVICE_REF.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """`value` with every occurrence of these secret values (4 characters or more) as `***`: a
    service that echoes its request must not get a secret stored in the step's output."""
    found = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    if not found:
        return value
    pattern = re.compile("|".join(re.escape(s) for s in found))

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub("***", v)
        if isinstance(v, dict):
            return {walk(k) if isinstance(k, str) else k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)
