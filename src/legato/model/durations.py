"""Durations as users write them (`500ms`, `30s`, `5m`, `1h30m`, `2d`, or a number of seconds)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return seconds; raise ValueError with a readable reason when `value` is not a duration."""
    if isinstance(value, bool):
        raise ValueError("must be a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a finite duration")
        if value < 0:
            raise ValueError("must not be negative")
        return _bounded(float(value))
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a duration")
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError("must be a duration such as 500ms, 30s, 5m, 1h or a number of seconds")
    return _bounded(total)


# Ten years: longer than any timer or timeout means anything, short enough that every due time is a date.
MAX_DURATION = 10 * 366 * 86400.0


def _bounded(seconds: float) -> float:
    if seconds > MAX_DURATION:
        raise ValueError("must be at most 3660d (ten years)")
    return seconds


def parse_time(value: object) -> float:
    """Epoch seconds from an ISO 8601 date-time (UTC unless it names an offset) or a number of epoch
    seconds; ValueError with a readable reason otherwise."""
    if isinstance(value, bool):
        raise ValueError("must be a time")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("must be a finite time")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 time or epoch seconds, not {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"must be an ISO 8601 time such as 2026-12-01T09:00:00Z, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_duration(seconds: float) -> str:
    """The shortest exact spelling, used when a model is written back out."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    ms = seconds * 1000
    if ms.is_integer():
        return f"{int(ms)}ms"
    return f"{seconds}s"
