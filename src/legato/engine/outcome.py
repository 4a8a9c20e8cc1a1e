"""What an executor reports for one attempt: success with an output, or a failure of a named kind,
and the lines the attempt logged (Python steps: see step_logs)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
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


def retry_after(headers: dict[str, str], now: float | None = None) -> dict[str, float]:
    """`{"retry_after": seconds}` from an answer's `Retry-After` (seconds, or an HTTP date), for the
    failure it is part of: the decider waits at least that long before the next attempt (up to
    the policy's `max_delay`). Nothing for a missing or unreadable value: the backoff applies."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return {}
    text = value.strip()
    try:
        seconds = float(text) if text.isdigit() else _date_seconds(text, now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return {}
    if not math.isfinite(seconds):
        return {}
    return {"retry_after": max(0.0, seconds)}


def _date_seconds(text: str, now: float | None) -> float:
    when = parsedate_to_datetime(text)
    if when.tzinfo is None:  # an HTTP date is GMT; one without a zone is read as such
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - (time.time() if now is None else now)
