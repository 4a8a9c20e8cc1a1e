"""Recent calls per service, counted in this process from the engine's committed decisions.

In-process and in-memory on purpose: no store change, and the page says what it counts ("this
process, last 15 minutes"). A call is a finished attempt of an HTTP step: a succeeded step, or an
attempt the decider recorded as failed. The service is looked up from the run's workflow when the
page is drawn, so the hot path only adds to a count.

Calls are counted per minute and per (workflow, version, step), not kept one by one: memory stays
the same whatever the load. (A deque of every call, pruned only when the page was drawn, grew by
each call for as long as nobody looked: RSS rose in a straight line under steady load.)
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from legato.engine.runtime import Engine
from legato.engine.state import FAILED, SUCCEEDED, Decision
from legato.errors import LegatoError
from legato.model.workflow import HttpCall, MapOver, Workflow

WINDOW = 15 * 60.0
BUCKET = 60.0  # seconds a count covers

_Key = tuple[str, int | None, str]  # workflow, version (None: the latest), step


@dataclass
class ServiceCalls:
    calls: int = 0
    errors: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


def step_service(wf: Workflow, step: str) -> str | None:
    """The service a step (or a map's child, `name[3]`) calls, if it is an HTTP call by name."""
    found = wf.steps.get(step.split("[", 1)[0])
    if found is None:
        return None
    action = found.action.action if isinstance(found.action, MapOver) else found.action
    return action.service if isinstance(action, HttpCall) else None


class CallStats:
    def __init__(self, engine: Engine, window: float = WINDOW) -> None:
        self.engine = engine
        self.window = window
        # Oldest first: (minute, {key: [calls, errors]}); only the window's minutes are kept.
        self._buckets: deque[tuple[int, dict[_Key, list[int]]]] = deque()
        engine.subscribe(self.observe)

    def _count(self, at: float, key: _Key, ok: bool) -> None:
        minute = int(at // BUCKET)
        if not self._buckets or self._buckets[-1][0] < minute:
            self._buckets.append((minute, {}))
            self._prune(at)
        # A call that finished a little before the newest minute began counts in it.
        entry = self._buckets[-1][1].setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += not ok

    def _prune(self, now: float) -> None:
        oldest = int((now - self.window) // BUCKET)
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def observe(self, d: Decision) -> None:
        # The version is known when the decision carries the run; otherwise the latest is used.
        version = d.run.version if d.run is not None else None
        for a in d.attempts:
            if a.status == FAILED:
                step = a.step.split("[", 1)[0]
                self._count(a.finished_at or time.time(), (d.workflow, version, step), False)
        for s in d.steps.values():
            if s.status == SUCCEEDED and s.finished_at is not None:
                step = s.name.split("[", 1)[0]
                self._count(s.finished_at, (d.workflow, version, step), True)

    async def by_service(self) -> dict[str, ServiceCalls]:
        self._prune(time.time())
        counts: dict[_Key, list[int]] = {}
        for _, bucket in self._buckets:
            for key, (calls, errors) in bucket.items():
                entry = counts.setdefault(key, [0, 0])
                entry[0] += calls
                entry[1] += errors
        out: dict[str, ServiceCalls] = {}
        for (wf_name, version, step), (calls, errors) in counts.items():
            try:
                wf, _ = await self.engine.workflow_version(wf_name, version)
            except LegatoError:
                continue
            service = step_service(wf, step)
            if service is not None:
                entry_out = out.setdefault(service, ServiceCalls())
                entry_out.calls += calls
                entry_out.errors += errors
        return out
