"""Run and step state as plain immutable data: what the store keeps and what the decider reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from legato.model.workflow import Call

PENDING = "pending"
RUNNING = "running"
WAITING = "waiting"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
CANCELLED = "cancelled"

STATUSES = (PENDING, RUNNING, WAITING, SUCCEEDED, FAILED, SKIPPED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})
ACTIVE_RUN = frozenset({PENDING, RUNNING, WAITING})


class StepState(NamedTuple):
    """A step's current attempt. `attempt` counts every attempt ever made (history numbering);
    `tries` counts those in the current retry budget, which a run retry resets.

    A NamedTuple rather than a dataclass: the decider copies these with `_replace` on every
    transition, and that is several times cheaper than `dataclasses.replace`.
    """

    name: str
    status: str = PENDING
    attempt: int = 0
    tries: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    next_at: float | None = None
    request: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Attempt:
    """One finished attempt of one step. The decider emits these for attempts that failed or were
    cancelled; a succeeded attempt is the step's own row, and the store reports both as history."""

    run_id: str
    step: str
    attempt: int
    status: str
    started_at: float | None
    finished_at: float | None
    request: Any
    output: Any
    error: dict[str, Any] | None


class RunInfo(NamedTuple):
    id: str
    workflow: str
    version: int
    status: str
    input: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    # A sub-workflow's run: the parent run, step and attempt that wait for it to end.
    parent: tuple[str, str, int] | None = None

    @property
    def done(self) -> bool:
        return self.status not in ACTIVE_RUN


@dataclass(slots=True)
class RunState:
    """A run and the steps it has touched; a step absent from `steps` is pending and untouched."""

    info: RunInfo
    steps: dict[str, StepState] = field(default_factory=dict)

    def step(self, name: str) -> StepState:
        return self.steps.get(name) or StepState(name)


# Events: what happened to a run. The decider answers each with a Decision.


@dataclass(frozen=True, slots=True)
class Start:
    pass


@dataclass(frozen=True, slots=True)
class StepDone:
    step: str
    attempt: int
    ok: bool
    output: Any
    error: dict[str, Any] | None
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class Callback:
    """A service reported on an async call: its output, its error, or a heartbeat (still working)."""

    step: str
    attempt: int
    output: Any = None
    error: dict[str, Any] | None = None
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class EventArrived:
    """An event for a step listening for it (published, or a kept one moved to its inbox)."""

    step: str
    attempt: int
    data: Any


@dataclass(frozen=True, slots=True)
class ChildDone:
    """A sub-workflow's run ended (or could not start: `error` says why)."""

    step: str
    attempt: int
    ok: bool
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a look at a polled result location found: nothing yet, the result, or an error."""

    step: str
    attempt: int
    found: bool
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Wake:
    """A step's retry delay is over."""

    step: str


@dataclass(frozen=True, slots=True)
class Cancel:
    reason: str = "cancelled by request"


@dataclass(frozen=True, slots=True)
class Timeout:
    """The run's deadline passed."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Run a failed or cancelled run again from the steps that did not succeed."""


@dataclass(frozen=True, slots=True)
class Resume:
    """The engine restarted: re-issue the effects that were in flight."""


Event = (
    Start
    | StepDone
    | Callback
    | EventArrived
    | ChildDone
    | Fetched
    | Wake
    | Cancel
    | Timeout
    | Retry
    | Resume
)


# Effects: what the runtime must do once the decision is committed.


@dataclass(frozen=True, slots=True)
class Execute:
    step: str
    attempt: int
    action: Call
    request: dict[str, Any]
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Schedule:
    step: str
    at: float


@dataclass(frozen=True, slots=True)
class Listening:
    """A step began waiting for an event: the runtime looks for a kept one that matches."""

    step: str
    attempt: int
    type: str
    key: str


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start the sub-workflow run `run_id` (an id fixed by the attempt, so a restart that issues
    this again finds the run it started rather than starting a second)."""

    step: str
    attempt: int
    run_id: str
    workflow: str
    version: int | None
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Look at a polled result location: `{"url": ...}` or `{"bucket": ..., "key": ...}`."""

    step: str
    attempt: int
    location: dict[str, str]


@dataclass(frozen=True, slots=True)
class Abort:
    step: str


@dataclass(frozen=True, slots=True)
class Finished:
    status: str


Effect = Execute | Schedule | Listening | StartChild | Fetch | Abort | Finished


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event for another run, written to that run's inbox in the same transaction as the
    decision that sends it (a sub-workflow's end, for its parent): it can be neither lost nor sent
    twice, whichever process holds the other run."""

    run_id: str
    event: dict[str, Any]  # an Event as inbox.encode makes it


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A notification to send, written to the outbox in the same transaction as the decision that
    causes it, and delivered after the commit by whichever engine is alive (engine/outbox.py).
    `delivery_id` stays the same across retries and redeliveries, for the receiver to dedupe."""

    delivery_id: str
    run_id: str
    event: str  # "failure", "success" or "retry"
    channel: str  # "email" or "webhook"
    target: str  # the addresses (", "-joined), or the webhook's URL
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StepLogs:
    """Lines an attempt logged, written with the decision that records its outcome."""

    run_id: str
    step: str
    attempt: int
    lines: tuple[tuple[float, str, str, str], ...]  # (unix time, level, source, message)


@dataclass(slots=True)
class Decision:
    """The changes to commit (all or nothing) and the effects to carry out after the commit.

    The runtime adds the fields after `new_run`: the inbox rows the decision used up, the
    deliveries it sends, the notifications it causes (`outbox`), and whether the engine lets go of the run with it (`release`: the run
    waits or has ended; `wake_at` is when it has something due, stored so any engine can claim it).
    """

    run_id: str
    workflow: str = ""
    run: RunInfo | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    new_run: bool = False
    consumed_inbox: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    release: bool = False
    wake_at: float | None = None
    outbox: list[Outgoing] = field(default_factory=list)
    logs: list[StepLogs] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.run is None and not self.steps and not self.attempts

    @property
    def writes(self) -> bool:
        """Anything for the store to do (an empty decision may still use up an inbox row)."""
        return not self.empty or bool(
            self.consumed_inbox or self.deliveries or self.release or self.outbox
        )
