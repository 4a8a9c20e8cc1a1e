"""Starts the runs of scheduled workflows: one run per interval, whatever the number of processes.

Exactly-once rests on the store, not on this loop: `Store.fire_schedule` inserts an interval's run
and moves the schedule on in one transaction that holds the schedule's row (SQLite: BEGIN
IMMEDIATE; PostgreSQL: FOR UPDATE SKIP LOCKED) and only if the schedule still stands where this
process read it. The run's id is derived from (workflow, interval start), so even a schedule row
made again cannot give one interval a second run. After downtime the loop finds the schedule
behind and fires each missed interval in turn (catchup) or only the latest (no catchup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

from legato.engine.decider import decide
from legato.engine.ids import scheduled_run_id
from legato.engine.outbox import new_delivery_id, outgoing
from legato.engine.state import PENDING, RunInfo, RunState, Start
from legato.errors import DefinitionError, NotFound
from legato.model.fields import check_object
from legato.model.schedule import interval_context
from legato.model.workflow import Workflow
from legato.store.faults import failed as store_failed

if TYPE_CHECKING:
    from legato.engine.runtime import Engine

log = logging.getLogger("legato.scheduler")

POLL = 1.0  # the longest the loop sleeps: a schedule added or unpaused elsewhere is seen this soon
BURST = 100  # intervals one pass fires per schedule before giving the others their turn


def scheduled_input(wf: Workflow, start: float, end: float) -> dict[str, object]:
    """A scheduled run's input: the declared defaults and `schedule`, its interval."""
    data, _ = check_object(wf.inputs, {}, "input", strict=False)
    return {**data, "schedule": interval_context(start, end)}


class Scheduler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.wake = asyncio.Event()

    async def run_forever(self) -> None:
        while True:
            try:
                delay = await self.tick()
            except Exception as exc:
                store_failed(log, exc, "scheduler pass failed; trying again shortly")
                delay = POLL
            self.wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that comes as the
            # event is set (a pause just before a stop), and the engine's close waited forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, min(POLL, delay))):
                    await self.wake.wait()

    async def tick(self) -> float:
        """Fire every interval that is due; return the seconds until the next one may be."""
        engine, store = self.engine, self.engine.store
        now = engine.clock()
        soonest = POLL
        schedules = await store.list_schedules()
        for row in schedules:
            if row.paused or engine.draining:
                continue
            try:
                fire = await self._fire(row.workflow, row.next_start, now)
            except Exception as exc:  # one schedule's trouble must not stop the others
                store_failed(log, exc, "scheduling %s failed; trying again shortly", row.workflow)
                continue
            # A fire time already past means the interval could not run (too many runs active,
            # or another process has it): look again after POLL, not in a tight loop.
            if fire is not None and fire > now:
                soonest = min(soonest, fire - now)
        return soonest

    async def _fire(self, name: str, next_start: float | None, now: float) -> float | None:
        """Fire the due intervals of one schedule; when the next one is due. The schedule that
        counts is the latest version's (on a shared store, as the store knows it: another process
        may have registered one)."""
        engine, store = self.engine, self.engine.store
        try:
            wf, version = await engine.workflow_version(name)
        except (NotFound, DefinitionError):
            return None
        schedule = wf.schedule
        if schedule is None:
            return None
        for _ in range(BURST):
            interval = schedule.due(next_start, now)
            if interval is None or next_start is None:
                break
            start, end = interval
            info = RunInfo(
                id=scheduled_run_id(wf.name, start),
                workflow=wf.name,
                version=version,
                status=PENDING,
                input=scheduled_input(wf, start, end),
                created_at=now,
            )
            decision = decide(wf, RunState(info), Start(), now, random.random())
            decision.new_run = True
            # A run that fails at once (its first step's template) is notified like any other.
            decision.outbox = outgoing(wf.notify, decision, info, new_delivery_id)
            outcome = await store.fire_schedule(
                wf.name, next_start, end, decision, schedule.max_active_runs, now
            )
            if outcome == "taken":  # not silently: an interval ran no run
                log.warning(
                    "scheduled run %s of %s for %s was not started: a run of another workflow "
                    "has its id",
                    info.id,
                    wf.name,
                    start,
                )
                next_start = end
                continue
            if outcome != "fired":
                break  # another process fired it, it was paused, or too many runs are active
            log.info("scheduled run %s of %s for %s", info.id, wf.name, start)
            engine.scheduled_run_started()
            if decision.outbox:
                engine.notifier.wake()
            next_start = end
        return schedule.next_fire(next_start)
