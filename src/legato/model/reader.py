"""Reads plain dicts (from YAML, JSON or the DSL) into the model, collecting every problem with its path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from legato.errors import Problem
from legato.model.durations import parse_duration
from legato.model.fields import TYPE_ALIASES, TYPES, Field

T = TypeVar("T")
_MISSING: Any = object()


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Reader:
    """A view of one mapping: typed getters that record problems instead of raising, then `done()`
    reports the keys nobody asked for as unknown fields."""

    def __init__(self, data: Any, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        self.ok = isinstance(data, dict)
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.seen: set[str] = set()
        if not self.ok:
            problems.append(Problem(path, "must be a mapping"))

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(Problem(self.at(key) if key else self.path, message))

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                self.problem(key, "is required")
                return None
            return default
        value = self.data[key]
        bad_bool = isinstance(value, bool) and kind in (int, float, (int, float))
        if bad_bool or not isinstance(value, kind):
            self.problem(key, f"must be {_kind_name(kind)}")
            return default if default is not _MISSING else None
        return value

    def convert(self, key: str, fn: Callable[[Any], T], default: T) -> T:
        """Read a value through `fn`, which raises ValueError with the message to report."""
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return fn(self.data[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def duration(self, key: str, default: float | None = None) -> float | None:
        return self.convert(key, parse_duration, default)

    def names(self, key: str) -> tuple[str, ...]:
        """A list of names, also accepting one bare name."""
        value = self.raw(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        self.problem(key, "must be a name or a list of names")
        return ()

    def done(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.problem(key, "is not a known field")


def read_fields(value: Any, path: str, problems: list[Problem]) -> tuple[Field, ...]:
    """Fields as a list of `{name, type, description, required, default}` or a `{name: type}` map."""
    if value is None:
        return ()
    items: list[tuple[str, Any]]
    if isinstance(value, dict):
        items = []
        for key, spec in value.items():
            if isinstance(spec, str):
                spec = {"name": key, "type": spec}
            elif isinstance(spec, dict):
                spec = {"name": key, **spec}  # a copy: the caller's definition stays as written
            items.append((join(path, key), spec))
    elif isinstance(value, list):
        items = [(join(path, i), v) for i, v in enumerate(value)]
    else:
        problems.append(Problem(path, "must be a list of fields or a mapping of name to type"))
        return ()
    fields: list[Field] = []
    names: set[str] = set()
    for where, item in items:
        r = Reader(item, where, problems)
        if not r.ok:
            continue
        name = r.get("name", str)
        type_name = r.get("type", str, "any")
        type_name = TYPE_ALIASES.get(type_name, type_name)
        if type_name not in TYPES:
            aliases = ", ".join(TYPE_ALIASES)
            r.problem(
                "type",
                f"{type_name!r} is not a type: must be one of {', '.join(TYPES)} "
                f"(or their short names {aliases})",
            )
            type_name = "any"
        description = r.get("description", str, "")
        required = r.get("required", bool, True)
        default = r.raw("default")
        if default is not None:
            required = False
        r.done()
        if name is None:
            continue
        if name in names:
            r.problem("name", f"duplicate field {name!r}")
        names.add(name)
        fields.append(Field(name, type_name, description, required, default))
    return tuple(fields)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "a mapping",
        list: "a list",
    }
    if isinstance(kind, tuple):
        if set(kind) == {int, float}:
            return "a number"
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)
