"""Recent calls per service, counted in this process from the engine's committed decisions.

In-process and in-memory on purpose: no store change, and the page says what it counts ("this
process, last 15 minutes"). A call is a finished attempt of an HTTP step: a succeeded step, or an
attempt the decider recorded as failed. The service is looked up from the run's workflow when the
page is drawn, so the hot path only appends to a bounded deque.
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
MAX_KEPT = 200_000


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
        # (finished at, workflow, version, step, ok)
        self._calls: deque[tuple[float, str, int | None, str, bool]] = deque(maxlen=MAX_KEPT)
        engine.subscribe(self.observe)

    def observe(self, d: Decision) -> None:
        # The version is known when the decision carries the run; otherwise the latest is used.
        version = d.run.version if d.run is not None else None
        for a in d.attempts:
            if a.status == FAILED:
                self._calls.append(
                    (a.finished_at or time.time(), d.workflow, version, a.step, False)
                )
        for s in d.steps.values():
            if s.status == SUCCEEDED and s.finished_at is not None:
                self._calls.append((s.finished_at, d.workflow, version, s.name, True))

    async def by_service(self) -> dict[str, ServiceCalls]:
        since = time.time() - self.window
        while self._calls and self._calls[0][0] < since:
            self._calls.popleft()
        counts: dict[tuple[str, int | None, str], list[int]] = {}
        for at, name, version, step, ok in self._calls:
            if at < since:
                continue
            entry = counts.setdefault((name, version, step.split("[", 1)[0]), [0, 0])
            entry[0] += 1
            entry[1] += not ok
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
