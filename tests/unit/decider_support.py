"""A tiny driver for the pure decider: send events, apply each Decision to the RunState by hand."""

from __future__ import annotations

from typing import Any

from legato.engine.decider import ServiceRetry, decide
from legato.engine.state import (
    PENDING,
    Abort,
    Decision,
    Event,
    Execute,
    Finished,
    RunInfo,
    RunState,
    Schedule,
    Start,
    StepDone,
    StepState,
)
from legato.model import build_workflow
from legato.model.workflow import Workflow

URL = "http://svc.test/"


def http(path: str = "", **extra: Any) -> dict[str, Any]:
    """An HTTP step to a fixed URL."""
    call: dict[str, Any] = {"url": URL}
    if path:
        call["path"] = path
    return {"http": call, **extra}


def build(steps: dict[str, Any], **top: Any) -> Workflow:
    return build_workflow({"name": "w", "steps": steps, **top})


def apply(state: RunState, d: Decision) -> None:
    state.info = d.run if d.run else state.info
    state.steps.update(d.steps)


class Run:
    """One run of `wf`, driven event by event; `decisions` keeps every Decision in order."""

    def __init__(
        self, wf: Workflow, input_: dict[str, Any] | None = None, *, now: float = 100.0
    ) -> None:
        self.wf = wf
        self.now = now
        self.state = RunState(
            RunInfo("run-1", wf.name, 1, PENDING, dict(input_ or {}), created_at=now)
        )
        self.decisions: list[Decision] = []
        self.service_retry: ServiceRetry | None = None  # the directory's retry settings, if any

    # -- sending ------------------------------------------------------------------------------------

    def send(self, event: Event, *, at: float | None = None, rand: float = 0.5) -> Decision:
        if at is not None:
            self.now = at
        d = decide(self.wf, self.state, event, self.now, rand, self.service_retry)
        assert d.run_id == "run-1"
        apply(self.state, d)
        self.decisions.append(d)
        return d

    def start(self, **kw: Any) -> Decision:
        return self.send(Start(), **kw)

    def done(
        self,
        step: str,
        output: Any = None,
        *,
        ok: bool = True,
        error: dict[str, Any] | None = None,
        attempt: int | None = None,
        at: float | None = None,
        rand: float = 0.5,
    ) -> Decision:
        if at is not None:
            self.now = at
        s = self.step(step)
        ev = StepDone(
            step,
            s.attempt if attempt is None else attempt,
            ok,
            output,
            error,
            s.started_at if s.started_at is not None else self.now,
            self.now,
        )
        return self.send(ev, rand=rand)

    def ok(self, step: str, body: Any = None, *, status: int = 200, **kw: Any) -> Decision:
        """An HTTP-like success: output {status, body}."""
        return self.done(step, {"status": status, "body": body}, **kw)

    def fail(
        self, step: str, kind: str = "5xx", message: str = "boom", *, output: Any = None, **kw: Any
    ) -> Decision:
        return self.done(step, output, ok=False, error={"kind": kind, "message": message}, **kw)

    # -- reading ------------------------------------------------------------------------------------

    def step(self, name: str) -> StepState:
        return self.state.step(name)

    def status(self, name: str) -> str:
        return self.step(name).status

    def statuses(self) -> dict[str, str]:
        return {n: s.status for n, s in self.state.steps.items()}

    @property
    def run_status(self) -> str:
        return self.state.info.status

    @property
    def last(self) -> Decision:
        return self.decisions[-1]


def executes(d: Decision) -> list[Execute]:
    return [e for e in d.effects if isinstance(e, Execute)]


def executed(d: Decision) -> list[str]:
    """Names of the steps an Execute effect was emitted for, in order."""
    return [e.step for e in executes(d)]


def schedules(d: Decision) -> list[Schedule]:
    return [e for e in d.effects if isinstance(e, Schedule)]


def aborted(d: Decision) -> list[str]:
    return [e.step for e in d.effects if isinstance(e, Abort)]


def finished(d: Decision) -> list[str]:
    return [e.status for e in d.effects if isinstance(e, Finished)]
