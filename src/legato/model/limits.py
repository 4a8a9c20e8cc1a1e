"""Bounds on a definition document, checked before it is built, so a huge one is refused in
milliseconds instead of occupying the server for seconds (validation compiles every template)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from legato.errors import DefinitionError, Problem

DEFAULT_MAX_STEPS = 2000
DEFAULT_MAX_NESTING = 64
DEFAULT_MAX_DEFINITION = 1024 * 1024


@dataclass(frozen=True)
class DefinitionLimits:
    """`legato serve --max-steps/--max-nesting/--max-definition` (or LEGATO_MAX_*) set them."""

    max_steps: int = DEFAULT_MAX_STEPS
    max_nesting: int = DEFAULT_MAX_NESTING  # nesting of mappings and lists, the document included
    max_bytes: int = DEFAULT_MAX_DEFINITION  # the document as JSON (or as sent)

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise DefinitionError(
                [
                    Problem(
                        "",
                        f"the definition is {size} bytes; the limit is {self.max_bytes} "
                        "(legato serve --max-definition)",
                    )
                ]
            )

    def check_steps(self, count: int, path: str = "steps") -> None:
        if count > self.max_steps:
            raise DefinitionError(
                [
                    Problem(
                        path,
                        f"{count} {'services' if path == 'services' else 'steps'}; the limit is "
                        f"{self.max_steps} (legato serve --max-steps)",
                    )
                ]
            )

    def check(self, data: Any, size: int | None = None) -> None:
        """Raise DefinitionError naming the first limit `data` passes. `size`: the document's
        length as sent, when known (otherwise its JSON is measured)."""
        if isinstance(data, dict):  # first: counting steps is free, the rest walks everything
            steps = data.get("steps")
            if isinstance(steps, dict | list):
                self.check_steps(len(steps))
            services = data.get("services")
            if steps is None and isinstance(services, list):  # the services-in-order form
                self.check_steps(len(services), "services")
        if size is None:
            try:
                size = len(orjson.dumps(data))
            except TypeError:
                size = 0  # refused later, as something JSON cannot hold
        self.check_size(size)
        path = _too_deep(data, self.max_nesting)
        if path is not None:
            raise DefinitionError(
                [
                    Problem(
                        path,
                        f"nests deeper than {self.max_nesting} levels (legato serve --max-nesting)",
                    )
                ]
            )


def _too_deep(data: Any, limit: int) -> str | None:
    """The path of the first value nested past `limit` levels, or None (without recursion)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            continue
        if depth > limit:
            return path or "(document)"
        for key, child in items:
            if isinstance(child, dict | list):
                where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip(".")
                stack.append((child, depth + 1, where))
    return None
