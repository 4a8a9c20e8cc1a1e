"""The validated, immutable workflow model that every definition format produces."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from legato.expressions import Template
from legato.model.fields import Field
from legato.model.schedule import Schedule

# Failure kinds an executor reports; a retry policy names the ones it retries.
FAILURE_KINDS = (
    "network",
    "timeout",
    "5xx",
    "429",
    "4xx",
    "status",
    "exception",
    "input",
    "output",
    "template",
    "config",
    "callback",  # an async call's service reported an error through its callback
    "child",  # a sub-workflow's run failed or was cancelled
    "egress",  # the egress policy refused the address (never retried: it will not change)
    "limit",  # a bound was passed: sub-workflow depth or descendants, a rendered value's size
)
NEVER_RETRIED = frozenset({"egress"})
DEFAULT_RETRY_ON = frozenset({"network", "timeout", "5xx", "429"})

TRIGGERS = ("all_succeeded", "all_done", "one_succeeded", "none_failed")
STEP_KINDS = ("http", "python", "branch", "map", "fail", "wait", "listen", "workflow", "emit")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap: delay = min(max_delay, delay * backoff**n), then
    jittered to between half and all of it. A `Retry-After` answer may ask for longer (up to
    `max_delay`). `fallback` marks the built-in default of a step that calls out: nobody chose it.
    `given` names the fields someone wrote (step, workflow `defaults` or service): settings merge
    field by field, so a service's `retries: 0` survives a workflow's unrelated `retry_delay`, and
    only an `on` someone wrote may resubmit a job past its deadline (see decider.after_failure)."""

    retries: int = 0
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 300.0
    jitter: bool = True
    on: frozenset[str] = DEFAULT_RETRY_ON
    fallback: bool = False
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def over(self, below: RetryPolicy) -> RetryPolicy:
        """This policy's written fields laid over `below` (a service's setting under a step's)."""
        mine = {f: getattr(self, f) for f in self.given}
        return replace(below, **mine, given=self.given | below.given, fallback=False)

    def should_retry(self, kind: str, tries: int) -> bool:
        return tries <= self.retries and kind in self.on and kind not in NEVER_RETRIED

    def delay_for(self, tries: int, rand: float) -> float:
        """`tries` is the number of attempts made so far (1 after the first); `rand` is in [0, 1)."""
        try:
            base = min(self.max_delay, self.delay * self.backoff ** max(0, tries - 1))
        except OverflowError:  # a long retry budget: the cap was reached long ago
            base = self.max_delay
        if self.jitter:
            # Keep at least half the delay so retries of many runs spread out but never stampede.
            return base * (0.5 + rand / 2)
        return base


# What a step that calls out (http, emit, a map of http calls) runs under when neither the step,
# its workflow's `defaults` nor its service say otherwise: 3 attempts in all, the 2 retries about
# 1 s then 2 s apart, for network errors, timeouts, 429 and 5xx answers. Transient failures pass
# by themselves; asking every author to write retries for them made a 503 fail whole runs.
DEFAULT_RETRY = RetryPolicy(retries=2, fallback=True)


def calls_out(action: object) -> bool:
    """Whether a step's action reaches another system, whose transient failures are retried by
    default. Python functions are not: an exception is usually a bug that fails again."""
    if isinstance(action, MapOver):
        action = action.action
    return isinstance(action, HttpCall | Emit)


@dataclass(frozen=True, slots=True)
class Poll:
    """Where an accepted job's result appears, checked every `every` seconds: a URL (templated; it
    may use `accepted`, the acceptance answer) answering 404 until the result exists, or an object
    in an S3 bucket whose key Legato chooses and sends with the request."""

    every: float
    url: Template | None = None
    bucket: str | None = None
    # Extra request headers that also carry the bucket and the key (a CoWorks service reads
    # `X-CWS-S3Bucket` and `X-CWS-S3Key`), besides Legato's own `Legato-Result-*`.
    bucket_header: str | None = None
    key_header: str | None = None


@dataclass(frozen=True, slots=True)
class HttpCall:
    service: str | None
    url: Template | None
    method: str
    path: Template
    query: Template | None = None
    headers: Template | None = None
    json: Template | None = None
    body: Template | None = None
    success: tuple[tuple[int, int], ...] = ((200, 299),)
    # `async: true`: a success answer only accepts the job; the step then waits for its callback
    # (POST /api/callbacks/{token}), within the step's timeout and, if set, a heartbeat interval.
    callback: bool = False
    heartbeat: float | None = None
    poll: Poll | None = None
    # None: as the service says (`follow_redirects`), else not followed (a 3xx is the answer).
    follow_redirects: bool | None = None

    kind = "http"

    def is_success(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.success)


@dataclass(frozen=True, slots=True)
class PythonCall:
    function: str  # "module:qualname", also how a stored definition finds it again
    args: Template | None = None
    kind = "python"


@dataclass(frozen=True, slots=True)
class Branch:
    cases: tuple[tuple[Template, tuple[str, ...]], ...]
    otherwise: tuple[str, ...] = ()
    kind = "branch"

    @property
    def targets(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for _, then in self.cases:
            seen.update(dict.fromkeys(then))
        seen.update(dict.fromkeys(self.otherwise))
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class MapOver:
    over: Template
    action: HttpCall | PythonCall
    concurrency: int = 10
    kind = "map"


@dataclass(frozen=True, slots=True)
class Fail:
    message: Template
    kind = "fail"


@dataclass(frozen=True, slots=True)
class Wait:
    """A durable timer: `duration` seconds from the step's start, or `until` a time (an ISO 8601
    date-time, UTC unless it says otherwise, or epoch seconds) rendered when the step starts."""

    duration: float | None = None
    until: Template | None = None
    kind = "wait"


@dataclass(frozen=True, slots=True)
class Listen:
    """Wait for an event of type `event` whose key equals `key` (rendered when the step starts, e.g.
    `{{ input.order_id }}`); the event's data is the step's output."""

    event: str
    key: Template | None = None
    kind = "listen"


@dataclass(frozen=True, slots=True)
class SubWorkflow:
    """Start another workflow with `input` (templated) and wait for it; its output is the step's."""

    name: str
    input: Template | None = None
    version: int | None = None
    kind = "workflow"


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish `message` (templated JSON) to `to` (a subject, queue or topic) on a named transport.
    The message carries the run's id, so a reply can come back as an event keyed by it."""

    transport: str
    to: Template
    message: Template | None = None
    headers: Template | None = None
    kind = "emit"


Call = HttpCall | PythonCall | Emit  # what an executor carries out
Action = HttpCall | PythonCall | Branch | MapOver | Fail | Wait | Listen | SubWorkflow | Emit


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    action: Action
    depends_on: tuple[str, ...] = ()
    trigger: str = "all_succeeded"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    optional: bool = False
    description: str = ""

    @property
    def kind(self) -> str:
        return self.action.kind


NOTIFY_ON = ("failure", "retry", "success")


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    on: frozenset[str] = frozenset({"failure"})


@dataclass(frozen=True, slots=True)
class Notify:
    """Who hears of a run's failure, a step's retry or a run's success: addresses by email (the
    Airflow fields `email`, `email_on_failure`, `email_on_retry`, plus `email_on_success`) and
    webhooks, each for the events it lists."""

    email: tuple[str, ...] = ()
    email_on: frozenset[str] = frozenset()
    webhooks: tuple[Webhook, ...] = ()

    def wants(self, event: str) -> bool:
        return (bool(self.email) and event in self.email_on) or any(
            event in w.on for w in self.webhooks
        )


DESTINATION_KINDS = ("topic", "subject", "queue")


@dataclass(frozen=True, slots=True)
class Trigger:
    """Start a run for each message on `destination` (a Kafka topic, NATS subject or RabbitMQ
    queue, as `kind` says) of the transport named `transport`. `filter` (truthy starts a run),
    `key` (the dedupe key; None: the broker's message id) and `input` (None: the message) are
    rendered with the message (see engine/triggers.py). `group`: the consumer group the
    processes share (None: `legato.<workflow>`)."""

    transport: str
    kind: str
    destination: str
    filter: Template | None = None
    key: Template | None = None
    input: Template | None = None
    group: str | None = None


@dataclass(frozen=True)
class Workflow:
    """Steps are kept in a topological order; `spec` is the canonical plain form the digest is taken of."""

    name: str
    steps: Mapping[str, Step]
    spec: dict[str, Any]
    inputs: tuple[Field, ...] = ()
    outputs: tuple[Field, ...] = ()
    output: Template | None = None
    timeout: float | None = None
    description: str = ""
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict, compare=False)
    downstream: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    roots: tuple[str, ...] = ()
    schedule: Schedule | None = None
    tags: tuple[str, ...] = ()
    notify: Notify = field(default_factory=Notify)
    # `airflow: {params: {...}}`: templates also see Airflow's names (dag_run, ti, params, ds...),
    # see engine/airflow.py; None for every other workflow.
    airflow: Mapping[str, Any] | None = None
    triggers: tuple[Trigger, ...] = ()

    @property
    def digest(self) -> str:
        return spec_digest(self.spec)

    def to_dict(self) -> dict[str, Any]:
        return self.spec


def spec_digest(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()
