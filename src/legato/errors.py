"""Errors users see: each names what was wrong and where, so a CLI or an API can show it as is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LegatoError(Exception):
    """Base of every error Legato raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definition or an input, at a dotted path (`steps.charge.retry.delay`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationError(LegatoError):
    """A definition or an input was refused; `problems` lists every reason, not only the first."""

    kind = "invalid"

    def __init__(self, problems: list[Problem], what: str = "definition") -> None:
        self.problems = problems
        self.what = what
        super().__init__(self._text())

    def _text(self) -> str:
        lines = [str(p) for p in self.problems]
        if len(lines) == 1:
            return f"invalid {self.what}: {lines[0]}"
        return f"invalid {self.what}:\n  " + "\n  ".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.kind,
            "message": self._text(),
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
        }


class DefinitionError(ValidationError):
    """A workflow or service definition is not valid."""

    kind = "invalid_definition"


class InputError(ValidationError):
    """A run's input does not match the workflow's declared inputs."""

    kind = "invalid_input"

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems, what="input")


class NotFound(LegatoError):
    """A workflow, version, run or service that does not exist."""


class Conflict(LegatoError):
    """The request is valid but the object is not in a state that allows it."""
