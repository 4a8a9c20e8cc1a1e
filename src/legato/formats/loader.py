"""Reads a definition document, in any supported form, into a validated Workflow and its services."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

from legato.errors import DefinitionError, Problem
from legato.formats.services_in_order import chain_of, is_services_in_order, to_native
from legato.model.build import build_workflow
from legato.model.limits import DefinitionLimits
from legato.model.service import Service, service_entries
from legato.model.workflow import Workflow


@dataclass(frozen=True)
class Definition:
    """A workflow plus the services its document declared inline (to register in the directory).

    `chain` names the services a services-in-order document calls, in order: registration checks
    the workflow's outputs against what they declare producing."""

    workflow: Workflow
    services: tuple[Service, ...] = field(default=())
    chain: tuple[str, ...] = field(default=())


def parse_document(text: str | bytes, fmt: str = "auto") -> Any:
    """Parse JSON or YAML (`fmt` is "json", "yaml" or "auto"); a syntax error becomes a DefinitionError."""
    json_error = None
    if fmt in ("json", "auto"):
        try:
            return _storable(orjson.loads(text), "JSON")
        except orjson.JSONDecodeError as exc:
            if fmt == "json":
                raise DefinitionError([Problem("", f"malformed JSON: {exc}")]) from None
            json_error = exc
    try:
        return _load_yaml(text)
    except yaml.YAMLError as exc:
        # A document that starts like JSON was meant as JSON: its error is the one that helps.
        head = text.lstrip()[:1] if isinstance(text, str) else text.lstrip()[:1].decode("latin-1")
        if json_error is not None and head in ("{", "["):
            raise DefinitionError([Problem("", f"malformed JSON: {json_error}")]) from None
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([Problem("", f"malformed YAML{where}: {reason}")]) from None
    except RecursionError:
        raise DefinitionError([Problem("", "the document nests too deeply")]) from None
    except ValueError as exc:  # bytes that are not text
        raise DefinitionError([Problem("", f"unreadable document: {exc}")]) from None


# Aliases let a small YAML text stand for a huge document ("billion laughs"); a definition is far smaller.
MAX_YAML_NODES = 200_000


class _Loader(yaml.SafeLoader):
    """Plain scalars as YAML 1.2's core schema reads them. YAML 1.1 (PyYAML's default) reads on/off/
    yes/no as booleans (a retry policy's `on:` key would become True), 12:30 as 750, 010 as 8, and
    2024-01-01 as a date, which JSON has not; here those stay strings (010 too, rather than guess)."""


_REPLACED = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "timestamp", "value")}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+)$"
    ),
    list("-+0123456789."),  # no .inf or .nan: JSON has neither, so they stay strings
)


def _load_yaml(text: str | bytes) -> Any:
    """Safe YAML, refusing documents whose aliases expand past MAX_YAML_NODES or loop, and values JSON
    cannot hold (sets, bytes, integers past 64 bits, non-string keys): a definition is JSON data."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            message = f"the YAML expands to more than {MAX_YAML_NODES} values through aliases"
            raise DefinitionError([Problem("", message)])
        value = loader.construct_document(node)
    finally:
        loader.dispose()
    return _storable(value, "YAML")


def _storable(value: Any, fmt: str) -> Any:
    """The value, if the store can write it as JSON (orjson refuses what nests past 254 levels)."""
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise DefinitionError([Problem("", f"the {fmt} cannot be stored as JSON: {exc}")]) from None
    return value


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values in the document once every alias is copied out; shared nodes are counted once each
    time they are referenced, without walking them again."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise DefinitionError([Problem("", "the YAML holds an alias to itself (a loop)")])
        return sizes[key]
    sizes[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    total = min(total, MAX_YAML_NODES + 1)
    sizes[key] = total
    return total


def load_definition(
    data: Any,
    *,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    services: Collection[str] | None = None,
    limits: DefinitionLimits | None = None,
) -> Definition:
    """Accept the native form or the services-in-order form (told apart by `services` without `steps`).

    `services` are the directory's names; services the document itself declares count as known.
    `limits` (the defaults when None) are checked before anything is built.
    """
    limits = limits or DefinitionLimits()
    size = None
    if isinstance(data, str | bytes):
        size = len(data)
        limits.check_size(size)
        data = parse_document(data)
    limits.check(data, size)
    if is_services_in_order(data):
        # Every problem at once: the form's own (unknown fields, services) and the workflow's.
        problems: list[Problem] = []
        spec, inline = to_native(data, problems, services)
        try:
            workflow = build_workflow(spec, functions=functions)
        except DefinitionError as exc:
            # The steps and output are made from the services: with the form's own problems
            # reported, theirs would only repeat them under names the document does not have.
            skipped = ("steps", "output") if problems else ()
            found = [p for p in exc.problems if p.path.split(".")[0] not in skipped]
            problems.extend(p for p in found if p not in problems)
        if problems:
            raise DefinitionError(problems)
        return Definition(workflow, tuple(inline), chain_of(data))
    return Definition(build_workflow(data, functions=functions, services=services))


def load_services(text: str | bytes) -> list[dict[str, Any]]:
    """The services of one document (JSON or YAML): one service, a list, or `{"services": [...]}`,
    in machinery's form (`address`) or Legato's (`base_url`). DefinitionError lists every problem."""
    problems: list[Problem] = []
    found = service_entries(parse_document(text), "", problems)
    if problems:
        raise DefinitionError(problems, "service")
    return found
