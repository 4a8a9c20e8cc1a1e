"""Typed fields: the declared inputs and outputs of workflows and services, and the check of a value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legato.errors import Problem

TYPES = ("string", "integer", "number", "boolean", "object", "array", "any")
# Short names other tools write (machinery's documents say `int`): read as the JSON Schema name.
TYPE_ALIASES = {
    "int": "integer",
    "float": "number",
    "str": "string",
    "bool": "boolean",
    "dict": "object",
    "list": "array",
}


def type_matches(type_name: str, value: Any) -> bool:
    """JSON typing: a boolean is not a number, an integer is a number."""
    if type_name == "any":
        return True
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "boolean":
        return isinstance(value, bool)
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, dict)
    if type_name == "array":
        return isinstance(value, list)
    return False


@dataclass(frozen=True, slots=True)
class Field:
    """One named, typed value; optional fields may carry a default."""

    name: str
    type: str = "any"
    description: str = ""
    required: bool = True
    default: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.description:
            out["description"] = self.description
        if not self.required:
            out["required"] = False
            if self.default is not None:
                out["default"] = self.default
        return out


def check_object(
    fields: Sequence[Field], data: Any, path: str, *, strict: bool = True
) -> tuple[dict[str, Any], list[Problem]]:
    """Check `data` against `fields`; return it with defaults filled in, and every problem found.

    With no declared fields any object passes: typing is opt-in. `strict` refuses undeclared keys.
    """
    if not isinstance(data, dict):
        return {}, [Problem(path, "must be a JSON object")]
    if not fields:
        return data, []
    problems: list[Problem] = []
    out = dict(data)
    known = {f.name for f in fields}
    for f in fields:
        where = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.required:
                problems.append(Problem(where, f"is required ({f.type})"))
            elif f.default is not None:
                out[f.name] = f.default
            continue
        value = data[f.name]
        if not type_matches(f.type, value):
            problems.append(Problem(where, f"must be {_article(f.type)}, got {_json_type(value)}"))
    if strict:
        for key in data:
            if key not in known:
                where = f"{path}.{key}" if path else key
                problems.append(
                    Problem(where, f"is not a declared field ({', '.join(sorted(known))})")
                )
    return out, problems


def fields_to_dicts(fields: Sequence[Field]) -> list[dict[str, Any]]:
    return [f.to_dict() for f in fields]


def _article(type_name: str) -> str:
    return ("an " if type_name[0] in "aeiou" else "a ") + type_name


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
