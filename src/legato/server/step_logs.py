"""Step logs over HTTP: the lines a service sends with its callback, checked and bounded, and
`GET /api/runs/{run_id}/logs`, a run's lines by step and attempt, a page at a time.

Lines are masked as they are stored (a secret reference or a URL's credentials never reach the
store) and again as they are shown.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from legato.engine.outcome import LogLine
from legato.engine.runtime import Engine
from legato.engine.step_logs import MAX_BYTES, MAX_LINE, MAX_LINES
from legato.masking import mask_text
from legato.server import payloads
from legato.server.errors import ApiError, json_response

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PAGE = 200  # rows (an attempt's output, or one callback's lines) per answer
MAX_ATTEMPT = 2**31


def callback_lines(value: Any, now: float) -> list[LogLine]:
    """A callback's `logs`: a list of strings, or of {"message", "level"?, "ts"?} objects, at most
    MAX_LINES lines and MAX_BYTES bytes, each line at most MAX_LINE characters."""
    if not isinstance(value, list):
        raise ApiError(422, "must be a list of lines (strings or {message, level, ts})", "logs")
    if len(value) > MAX_LINES:
        raise ApiError(422, f"has {len(value)} lines; at most {MAX_LINES} per callback", "logs")
    lines: list[LogLine] = []
    size = 0
    for i, item in enumerate(value):
        where = f"logs[{i}]"
        if isinstance(item, str):
            item = {"message": item}
        if not isinstance(item, dict):
            raise ApiError(422, "must be a string or an object {message, level, ts}", where)
        unknown = sorted(set(item) - {"message", "level", "ts"})
        if unknown:
            raise ApiError(
                422, "is not a known field (message, level, ts)", f"{where}.{unknown[0]}"
            )
        message = item.get("message")
        if not isinstance(message, str):
            raise ApiError(422, "is required: the line's text", f"{where}.message")
        if len(message) > MAX_LINE:
            raise ApiError(422, f"is longer than {MAX_LINE} characters", f"{where}.message")
        level = item.get("level", "INFO")
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise ApiError(422, f"must be one of {', '.join(LEVELS)}", f"{where}.level")
        ts = item.get("ts", now)
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts < 253402300800:
            raise ApiError(422, "must be a Unix time in seconds", f"{where}.ts")
        size += len(message.encode("utf-8", "replace"))
        if size > MAX_BYTES:
            raise ApiError(422, f"holds over {MAX_BYTES} bytes; send fewer per callback", "logs")
        lines.append((float(ts), level.upper(), "service", mask_text(message)))
    return lines


async def attach(engine: Engine, token: str, lines: list[LogLine]) -> bool:
    """Store a callback's lines for the attempt its token names (the token was checked already);
    False when the attempt had too many callbacks with lines for these to be kept."""
    ref = engine.tokens.read(token) if engine.tokens is not None else None
    if ref is not None and lines:
        return await engine.store.append_logs(ref.run_id, ref.step, ref.attempt, lines, time.time())
    return True


def line_payload(step: str, attempt: int, line: LogLine) -> dict[str, Any]:
    ts, level, source, message = line
    return {
        "ts": payloads.iso(ts),
        "step": step,
        "attempt": attempt,
        "level": level,
        "source": source,
        "message": mask_text(message),
    }


async def run_logs(request: Request, engine: Engine, run_id: str) -> Response:
    """GET /api/runs/{run_id}/logs?step=S&attempt=N&after=C: lines in the order written."""
    step = request.query_params.get("step")
    attempt = _int_param(request, "attempt", 1, MAX_ATTEMPT)
    after = _int_param(request, "after", 0, 2**62) or 0
    if attempt is not None and step is None:
        raise ApiError(400, "needs step: an attempt is a step's", "attempt")
    if await engine.store.run_status(run_id) is None:
        raise ApiError(404, f"no run with id {run_id!r}", "run_id")
    rows = await engine.store.get_logs(run_id, step, attempt, after, PAGE + 1)
    page = rows[:PAGE]
    lines = [line_payload(r.step, r.attempt, line) for r in page for line in r.lines]
    cursor = page[-1].id if len(rows) > PAGE else None
    return json_response({"run_id": run_id, "logs": lines, "next_cursor": cursor})


def _int_param(request: Request, name: str, low: int, high: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "must be a whole number", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"must be between {low} and {high}", name)
    return value
