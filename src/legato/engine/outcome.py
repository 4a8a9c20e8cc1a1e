"""What an executor reports for one attempt: success with an output, or a failure of a named kind,
and the lines the attempt logged (Python steps: see step_logs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LogLine = tuple[float, str, str, str]  # (unix time, level, logger or stream, message)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    output: Any = None
    error: dict[str, Any] | None = None
    logs: tuple[LogLine, ...] = ()

    @staticmethod
    def failure(kind: str, message: str, output: Any = None, **extra: Any) -> Outcome:
        return Outcome(False, output, {"kind": kind, "message": message, **extra})
