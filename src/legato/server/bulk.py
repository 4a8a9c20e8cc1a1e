"""Bulk actions: cancel or retry every run a filter matches (`POST /api/runs:cancel`, `:retry`).

An empty filter is refused unless the body says `"all": true`: cancelling every run must never be the
result of a forgotten field.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from legato.engine.lineage import RunFilter
from legato.engine.state import ACTIVE_RUN, CANCELLED, FAILED, SUCCEEDED
from legato.model.build import TAG, WORKFLOW_NAME
from legato.server import bodies
from legato.server.errors import ApiError, json_response

FIELDS = ("workflow", "status", "tag", "created_after", "created_before", "all")
RUN_STATUSES = (*sorted(ACTIVE_RUN), SUCCEEDED, FAILED, CANCELLED)
SHOWN_IDS = 100  # the answer lists at most this many of the runs it touched


def _time(body: dict[str, Any], name: str) -> float | None:
    """Seconds since the epoch, or an ISO 8601 date and time (UTC unless it says otherwise)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ApiError(422, "must be a finite number of seconds since the epoch", name)
        return seconds
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(
                422, f"must be an ISO 8601 date and time or epoch seconds, not {value!r}", name
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    raise ApiError(422, "must be an ISO 8601 date and time or epoch seconds", name)


async def run_filter(request: Request, max_body: int, statuses: tuple[str, ...]) -> RunFilter:
    """The body as a filter; a 422 names the field that is wrong."""
    engine = request.app.state.legato.engine
    body = await bodies.json_object(request, max_body)
    bodies.only_fields(body, FIELDS)
    workflow = body.get("workflow")
    if workflow is not None and (
        not isinstance(workflow, str) or not WORKFLOW_NAME.fullmatch(workflow)
    ):
        raise ApiError(422, "must be a workflow name", "workflow")
    status = body.get("status")
    if status is not None and status not in statuses:
        raise ApiError(422, f"must be one of {', '.join(statuses)}, not {status!r}", "status")
    workflows = None
    tag = body.get("tag")
    if tag is not None:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise ApiError(422, "must be a tag (1-64 letters, digits, '_', '.', ':' or '-')", "tag")
        workflows = tuple((await engine.tags()).get(tag, []))
    everything = body.get("all", False)
    if not isinstance(everything, bool):
        raise ApiError(422, "must be true or false", "all")
    found = RunFilter(
        workflow=workflow,
        workflows=workflows,
        status=status,
        created_after=_time(body, "created_after"),
        created_before=_time(body, "created_before"),
        everything=everything,
    )
    if found.empty and not everything:
        raise ApiError(
            422,
            "an empty filter would match every run: give workflow, status, tag, created_after "
            'or created_before, or "all": true to mean every run',
            "body",
        )
    return found


def _answer(ids: list[str]) -> Response:
    return json_response({"count": len(ids), "ids": ids[:SHOWN_IDS]})


async def cancel_runs(request: Request) -> Response:
    """Cancel every matched run that has not ended, and all their descendants."""
    ctx = request.app.state.legato
    runs = await run_filter(request, ctx.max_body, RUN_STATUSES)
    return _answer(await ctx.engine.cancel_runs(runs))


async def retry_runs(request: Request) -> Response:
    """Retry every matched run that failed or was cancelled."""
    ctx = request.app.state.legato
    runs = await run_filter(request, ctx.max_body, (FAILED, CANCELLED))
    if ctx.engine.draining:
        raise ApiError(503, "the server is shutting down; try again shortly", "", "draining")
    return _answer(await ctx.engine.retry_runs(runs))
