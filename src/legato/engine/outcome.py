"""What an executor reports for one attempt: success with an output, or a failure of a named kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    output: Any = None
    error: dict[str, Any] | None = None

    @staticmethod
    def failure(kind: str, message: str, output: Any = None, **extra: Any) -> Outcome:
        return Outcome(False, output, {"kind": kind, "message": message, **extra})
