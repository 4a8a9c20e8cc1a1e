"""When a scheduled workflow runs: pure calendar math, no clock and no store.

A schedule cuts time into intervals at its boundaries (cron times, a preset, or every N seconds
from `start_date`). A run covers one interval [start, end) and is due once the interval is over,
as in Airflow: the `@daily` run for Monday starts just after Monday ends. The store keeps only the
start of the next interval to run, so the math here decides everything else. All times are UTC
epoch seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


def cron_problem(expression: str) -> str | None:
    """Why a cron expression (or preset) is refused, or None when croniter accepts it."""
    expr = PRESETS.get(expression, expression)
    if len(expr.split()) != 5:
        return "must be a cron expression of five fields, a preset (@hourly, @daily, @weekly, @monthly, @yearly) or an interval such as 30s or 1h"
    if not croniter.is_valid(expr):
        return f"is not a valid cron expression: {expression!r}"
    try:  # valid, yet perhaps never matching a date (the 31st of February)
        croniter(expr, 0.0).get_next(float)
        croniter(expr, 4102444800.0).get_prev(float)
    except Exception:
        return f"never matches a date: {expression!r}"
    return None


@dataclass(frozen=True, slots=True)
class Schedule:
    """`cron` (a five-field expression, presets already expanded) or `every` (seconds) sets the
    boundaries; intervals start no earlier than `start` and no later than `end` (exclusive)."""

    cron: str | None = None
    every: float | None = None
    start: float | None = None
    end: float | None = None
    catchup: bool = True
    max_active_runs: int | None = None

    def after(self, t: float) -> float:
        """The first boundary strictly after `t`."""
        if self.every is not None:
            anchor = self.start or 0.0
            k = math.floor((t - anchor) / self.every) + 1
            nxt = anchor + k * self.every
            return nxt if nxt > t else nxt + self.every
        assert self.cron is not None
        return float(croniter(self.cron, t).get_next(float))

    def before(self, t: float) -> float:
        """The last boundary strictly before `t`."""
        if self.every is not None:
            anchor = self.start or 0.0
            k = math.ceil((t - anchor) / self.every) - 1
            prev = anchor + k * self.every
            return prev if prev < t else prev - self.every
        assert self.cron is not None
        return float(croniter(self.cron, t).get_prev(float))

    def at_or_after(self, t: float) -> float:
        nxt = self.after(self.before(t))
        return nxt if nxt >= t else self.after(t)

    def floor(self, t: float) -> float:
        """The last boundary at or before `t`."""
        nxt = self.at_or_after(t)
        return nxt if nxt == t else self.before(t)

    def first(self, now: float) -> float | None:
        """The start of the first interval to run for a schedule seen for the first time at `now`:
        from `start_date` (all of them with catchup, else due() skips to the latest), or else the
        interval now under way (it runs when it ends)."""
        first = self.at_or_after(self.start) if self.start is not None else self.floor(now)
        return None if self.end is not None and first >= self.end else first

    def due(self, next_start: float | None, now: float) -> tuple[float, float] | None:
        """The interval (start, end) to run now, given the start of the next one not yet run, or
        None when it is not over yet or the schedule has ended. Without catchup, missed intervals
        are skipped: the latest interval that is over is the one to run."""
        if next_start is None or (self.end is not None and next_start >= self.end):
            return None
        start = next_start
        end = self.after(start)
        if end > now:
            return None
        if not self.catchup:
            latest_end = self.floor(now)
            latest_start = self.before(latest_end)
            if self.end is not None and latest_start >= self.end:
                # The schedule ended meanwhile: its last interval is the latest to run.
                latest_start = self.before(self.at_or_after(self.end))
                latest_end = self.after(latest_start)
            if latest_start > start:
                start, end = latest_start, latest_end
        return start, end

    def moved(self, next_start: float | None, now: float) -> float | None:
        """Where a schedule stands under a new version of its workflow: its next start snapped to
        the new calendar and no earlier than the new start_date; an ended one starts again from the
        interval under way (if the new version runs longer)."""
        at = self.floor(now) if next_start is None else next_start
        if self.start is not None:
            at = max(at, self.start)
        at = self.at_or_after(at)
        return None if self.end is not None and at >= self.end else at

    def next_fire(self, next_start: float | None) -> float | None:
        """When the next run is due (the end of its interval), None once the schedule ended."""
        if next_start is None or (self.end is not None and next_start >= self.end):
            return None
        return self.after(next_start)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def interval_context(start: float, end: float) -> dict[str, Any]:
    """What a scheduled run's templates read as `input.schedule`."""
    return {
        "interval_start": iso(start),
        "interval_end": iso(end),
        "logical_date": iso(start),
        "interval_start_ts": start,
        "interval_end_ts": end,
    }
