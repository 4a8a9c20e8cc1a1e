"""Reads a definition document, in any supported form, into a validated Workflow and its services."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml

from legato.errors import DefinitionError, Problem
from legato.formats.services_in_order import is_services_in_order, to_native
from legato.model.build import build_workflow
from legato.model.service import Service
from legato.model.workflow import Workflow


@dataclass(frozen=True)
class Definition:
    """A workflow plus the services its document declared inline (to register in the directory)."""

    workflow: Workflow
    services: tuple[Service, ...] = field(default=())


def parse_document(text: str | bytes, fmt: str = "auto") -> Any:
    """Parse JSON or YAML (`fmt` is "json", "yaml" or "auto"); a syntax error becomes a DefinitionError."""
    if fmt in ("json", "auto"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if fmt == "json":
                raise DefinitionError([Problem("", f"malformed JSON: {exc}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([Problem("", f"malformed YAML{where}: {reason}")]) from None


def load_definition(
    data: Any,
    *,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    services: Collection[str] | None = None,
) -> Definition:
    """Accept the native form or the services-in-order form (told apart by `services` without `steps`).

    `services` are the directory's names; services the document itself declares count as known.
    """
    if isinstance(data, str | bytes):
        data = parse_document(data)
    if is_services_in_order(data):
        problems: list[Problem] = []
        spec, inline = to_native(data, problems)
        if problems:
            raise DefinitionError(problems)
        known = None if services is None else {*services, *(s.name for s in inline)}
        return Definition(build_workflow(spec, functions=functions, services=known), tuple(inline))
    return Definition(build_workflow(data, functions=functions, services=services))
