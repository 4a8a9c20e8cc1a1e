"""The Engine: applies the decider's decisions durably and carries out their effects on asyncio.

Each event (a run started, a step answered, a timer fired) goes through `decide`; the new state is kept in
memory at once, queued for the store, and its effects (calls, timers) run only after the batch holding it
is committed. Batches form by themselves: whatever piles up while one commit is under way goes in the next
(group commit).

An engine holds a run only while the run has work under way. A run that only waits (for a callback, an
event, a timer, a child) is released to the store with its next due time indexed, and costs this process
nothing; whatever reaches it from outside goes to its inbox in the store, and whichever engine claims it
next (this one or another sharing the database) applies it. Claims are leases, so a run whose engine died
is taken over once its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar, cast

import orjson

from legato.engine import inbox, trees
from legato.engine.bugs import log_decide_failure
from legato.engine.decider import CALLBACK, CHILD, EVENT, decide, event_key
from legato.engine.directory import ExternalDirectory
from legato.engine.egress import EgressPolicy
from legato.engine.health import Health
from legato.engine.http_executor import HttpExecutor
from legato.engine.ids import new_run_id, result_key
from legato.engine.lineage import LimitReached, RunFilter, RunLimits
from legato.engine.notifier import Notifier
from legato.engine.outbox import new_delivery_id, outgoing
from legato.engine.outcome import Outcome
from legato.engine.python_executor import PythonExecutor
from legato.engine.results import S3Results
from legato.engine.scheduler import Scheduler
from legato.engine.secret_source import (
    MissingSecret,
    SecretSource,
    poll_templates,
    resolve_request,
)
from legato.engine.starts import Once, Starts
from legato.engine.state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING,
    Abort,
    Callback,
    ChildDone,
    Decision,
    Delivery,
    Event,
    EventArrived,
    Execute,
    Fetch,
    Fetched,
    Finished,
    Listening,
    Resume,
    Retry,
    RunInfo,
    RunState,
    Schedule,
    Start,
    StartChild,
    StepDone,
    StepLogs,
    Timeout,
    Wake,
)
from legato.engine.tokens import TaskTokens
from legato.engine.triggers import Triggers, unknown_transports
from legato.errors import (
    Conflict,
    DefinitionError,
    InputError,
    LegatoError,
    NotFound,
    Problem,
)
from legato.formats.loader import Definition, load_definition
from legato.formats.services_in_order import unproduced_outputs
from legato.masking import mask_markers, mask_request, mask_url
from legato.model.build import WORKFLOW_NAME, build_workflow, unknown_services
from legato.model.fields import check_object
from legato.model.limits import DefinitionLimits
from legato.model.schedule import interval_context
from legato.model.service import Service
from legato.model.workflow import Emit, HttpCall, MapOver, PythonCall, RetryPolicy, Step, Workflow
from legato.store.faults import REQUEST_LIMIT, Bounded, StoreUnavailable, bounded, unavailable
from legato.store.faults import failed as store_failed
from legato.store.protocol import (
    Accept,
    Claimed,
    Committed,
    Delivered,
    InboxRow,
    KeptEvent,
    Store,
    WorkflowRecord,
    open_store,
)
from legato.transports import Message, Transport, open_transport

log = logging.getLogger("legato.engine")
_T = TypeVar("_T")
ACTIVE = frozenset({PENDING, RUNNING, WAITING})
RETRIES = frozenset({FAILED, CANCELLED})
DEFAULT_EVENT_RETENTION = 3600.0
DEFAULT_LEASE = 30.0
IDLE_POLL = 5.0  # the longest a worker sleeps between claims when no notice or timer wakes it
PARK_AFTER = 1.0  # a run whose next due time is nearer than this stays in memory
CLAIM_BATCH = 500
CLAIM_GATHER = 0.005
CAUSE_CHARS = 2000  # of a sub-workflow's error quoted in its parent step's


class PublishResult(NamedTuple):
    id: str
    delivered_to: list[str]  # the runs whose listening steps took the event
    kept_until: float | None  # when nobody was listening: how long it waits for a listener


def _broken(state: RunState, exc: Exception, now: float) -> Decision:
    """The run fails with an internal error; calls under way are stopped."""
    info = state.info
    error = {
        "kind": "internal",
        "message": f"the engine could not decide: {type(exc).__name__}: {exc}",
    }
    running = [s.name for s in state.steps.values() if s.status == RUNNING]
    return Decision(
        run_id=info.id,
        workflow=info.workflow,
        run=info._replace(status=FAILED, finished_at=now, error=error),
        effects=[*(Abort(name) for name in running), Finished(FAILED)],
    )


def _not_waiting(step: str, attempt: int, status: str, current: int) -> str:
    return (
        f"step {step!r} attempt {attempt} is not waiting for a callback "
        f"(it is {status}, attempt {current})"
    )


def _job_key(run_id: str, step: str, attempt: int) -> str:
    """The Idempotency-Key of an async or polled job's submission: one per attempt. Each attempt's
    job reports on its own callback token or result key, so a service that deduplicated a new
    attempt onto an old job would report where nobody listens; a re-sent attempt (a restart)
    keeps its key. Plain calls keep `<run>:<step>` across attempts (one effect, retried)."""
    return f"{run_id}:{step}:{attempt}"


def _child_done(step: str, attempt: int, info: RunInfo) -> ChildDone:
    """What a sub-workflow's end means to the parent step waiting for it."""
    if info.status == SUCCEEDED:
        return ChildDone(step, attempt, True, info.output)
    cause = str((info.error or {}).get("message", info.status))
    if len(cause) > CAUSE_CHARS:  # each level quotes the one below: deep trees stay bounded
        cause = cause[:CAUSE_CHARS] + "..."
    error = {
        "kind": "child",
        "message": f"sub-workflow {info.workflow!r} run {info.id} {info.status}: {cause}",
        "run_id": info.id,
    }
    return ChildDone(step, attempt, False, None, error)


def _child_report(info: RunInfo) -> Delivery:
    assert info.parent is not None
    parent, step, attempt = info.parent
    return Delivery(parent, inbox.encode(_child_done(step, attempt, info)))


def _python_calls(step: Step) -> list[tuple[str, PythonCall]]:
    action = step.action
    if isinstance(action, PythonCall):
        return [("python", action)]
    if isinstance(action, MapOver) and isinstance(action.action, PythonCall):
        return [("map.step.python", action.action)]
    return []


@dataclass(slots=True)
class _Active:
    """A run this engine holds: its state (ahead of the store by the batch being committed) and
    what is under way for it. `busy` counts background work (a child starting, a result being
    looked for, an inbox read) and `pending` its decisions not yet committed: the run is released
    only when both are zero and no step is running."""

    state: RunState
    wf: Workflow
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    deadline: asyncio.TimerHandle | None = None
    busy: int = 0
    pending: int = 0
    ending: bool = False  # this engine decided the run's end (an adopted ended run is not)


def _due(state: RunState) -> float | None:
    """When a waiting run next has something to do: a step's due time or the run's deadline."""
    times = [s.next_at for s in state.steps.values() if s.status == WAITING and s.next_at]
    if state.info.status == RUNNING and state.info.deadline is not None:
        times.append(state.info.deadline)
    return min(times, default=None)


class Engine:
    """Use as `async with Engine.open("sqlite:///legato.db") as engine:`."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        python_modules: Collection[str] | None = None,
        worker: bool = True,
        lease: float = DEFAULT_LEASE,
        egress: EgressPolicy | str | None = None,
        run_limits: RunLimits | None = None,
    ) -> None:
        """`egress`: where steps, polls and webhooks may connect (see engine/egress.py; None
        refuses only link-local and metadata addresses).
        `python_modules`, when given, are the only modules a definition document's Python steps
        may import functions from (a server passes its allow-list; None allows any import).
        `worker=False` makes an engine that runs no step (an API-only server): it records new runs
        and what reaches them, and worker engines sharing the store claim and run them."""
        # Inside a request, store calls are bounded (see store/faults.py); elsewhere they are not.
        self.store = cast(Store, Bounded(store))
        self.health = Health(self.store.probe, lease=lease, worker=worker)
        self.clock = clock
        self.worker = worker
        self.lease = lease
        self.limits = run_limits or RunLimits()  # how deep and wide sub-workflow trees may grow
        self.id = new_run_id()
        self._services: dict[str, Service] = {}
        self._functions: dict[str, Callable[..., Any]] = {}
        self._workflows: dict[tuple[str, int], Workflow] = {}
        self._latest: dict[str, int] = {}
        self._runs: dict[str, _Active] = {}
        # Decisions to commit, each with the holding of its run it was decided on (None: a run
        # this engine does not hold), so the commit acts on that holding even if the run was
        # released and claimed again meanwhile.
        self._queue: list[tuple[_Active | None, Decision]] = []
        self._batch: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._draining = False
        self._background: set[asyncio.Task[None]] = set()
        self._listeners: list[Callable[[Decision], None]] = []
        # Runs whose end someone in this process awaits (wait_ended).
        self._waiters: dict[str, list[asyncio.Future[bool]]] = {}
        # Runs released but not yet committed as such; True: something arrived for one meanwhile,
        # so claim again once the release is in.
        self._parking: dict[str, bool] = {}
        self._applying: set[int] = set()  # inbox rows being applied (decided, not yet committed)
        self._applied: dict[int, None] = {}  # the last inbox rows applied, oldest first
        # New runs whose start request gave up (the store was down) before their first commit:
        # dropped from the batches still to be committed, so a start answered 503 never runs.
        self._withdrawn: dict[int, Decision] = {}
        # Withdrawn starts a failed commit may still have written (its answer lost with the
        # connection): handed back once the store answers, for any engine to claim if they exist.
        self._unsure: list[str] = []
        self._giving_up: dict[int, asyncio.Future[None]] = {}  # starts waiting in a request
        self._claimer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._claim_now: asyncio.Event | None = None
        self.scheduler = Scheduler(self)
        self.egress = egress if isinstance(egress, EgressPolicy) else EgressPolicy.parse(egress)
        self.starts = Starts(self)  # Idempotency-Keys and callers' run ids
        self.notifier = Notifier(store, clock, self.egress)
        self._scheduling: asyncio.Task[None] | None = None
        self._sleep_until = 0.0  # when the claimer will look next, unless woken
        self.secrets = SecretSource(store)
        self.http = HttpExecutor(self._services.get, self.egress, self.secrets.get)
        self.tokens: TaskTokens | None = None
        # Where services send callbacks: `legato serve` sets it to its own address (or --public-url).
        self.callback_base: str | None = None
        self.event_retention = DEFAULT_EVENT_RETENTION
        self.transports: dict[str, Transport] = {}
        self.results = S3Results()
        self._subscriptions: list[tuple[str, str]] = []
        self.triggers = Triggers(self)  # broker messages that start runs
        self.python = PythonExecutor(self._functions, python_modules)
        self.definition_limits = DefinitionLimits()  # for definitions registered from now on
        # A burst of sub-workflow starts (a fan-out of children) takes turns, a few at a time: on
        # SQLite each start commits on the loop, and 2,500 at once held requests up for 300 ms.
        self._child_starts = asyncio.Semaphore(16)
        self._building = asyncio.Semaphore(1)
        self.stats = {
            "commits": 0,
            "decisions": 0,
            "step_transitions": 0,
            "claimed": 0,
            "parked": 0,
            "scheduled": 0,
        }

    @classmethod
    def open(
        cls,
        url: str = "sqlite:///legato.db",
        *,
        python_modules: Collection[str] | None = None,
        migrate: bool = False,
        worker: bool = True,
        lease: float = DEFAULT_LEASE,
        egress: EgressPolicy | str | None = None,
        run_limits: RunLimits | None = None,
    ) -> Engine:
        """`migrate`: upgrade a database with an older schema (a new one is always created)."""
        return cls(
            open_store(url, migrate=migrate),
            python_modules=python_modules,
            worker=worker,
            lease=lease,
            egress=egress,
            run_limits=run_limits,
        )

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and the directory; a worker then claims every run that has something due
        (on SQLite, every run a previous process held) and keeps claiming as runs become due."""
        self.store.owner = self.id if self.worker else None
        self.store.lease = self.lease
        await self.store.open()
        self.tokens = TaskTokens(await self.store.secret("callbacks"))
        self.notifier.secret = await self.store.secret("webhooks")
        self.notifier.claimant = self.id
        for name, transport in self.transports.items():
            try:
                await transport.connect()
            except Exception as exc:
                raise LegatoError(
                    f"cannot connect transport {name!r} ({mask_url(transport.url)}): {exc}"
                ) from exc
        for name, destination in self._subscriptions:
            transport = self.transports[name]
            try:
                await transport.subscribe(destination, self._on_message)
            except Exception as exc:  # the broker's refusal, not the database's
                raise LegatoError(
                    f"cannot subscribe to {destination!r} on transport {name!r} "
                    f"({transport.url}): {type(exc).__name__}: {exc}"
                ) from exc
        self._wake = asyncio.Event()
        self._claim_now = asyncio.Event()
        self._batch = asyncio.get_running_loop().create_future()
        self._flusher = asyncio.create_task(self._flush_forever(), name="legato-commit")
        for service in await self.store.list_services():
            self._services[service.name] = service
        await self.store.listen(self._on_notice)
        if self.store.shared:
            self._watcher = asyncio.create_task(self._watch_forever(), name="legato-listen")
        if self.worker or self.store.shared:  # a SQLite file's outbox is its worker's
            self.notifier.start()
        if self.worker:
            while await self._claim_round() >= CLAIM_BATCH:
                pass
            self._claimer = asyncio.create_task(self._claim_forever(), name="legato-claim")
            self._renewer = asyncio.create_task(self._renew_forever(), name="legato-lease")
            self._scheduling = asyncio.create_task(
                self.scheduler.run_forever(), name="legato-schedule"
            )
        self.health.worker = self.worker
        self.health.start()
        if self.transports:  # once the engine runs: a message may start a run at once
            try:
                await self.triggers.start()
            except Exception as exc:  # a broker's refusal, or the workflows could not be read
                await self.close()
                raise LegatoError(f"cannot subscribe workflow triggers: {exc}") from exc

    def drain(self) -> None:
        """Start no new step from now on; steps under way finish and their outcomes are committed.

        What the drain leaves undone stays in the store as running or pending, and the next engine on
        the same database resumes it (with the same Idempotency-Key for a repeated call).
        """
        self._draining = True
        if self._claim_now is not None:
            self._claim_now.set()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_result(False)

    @property
    def draining(self) -> bool:
        return self._draining

    async def close(self, grace: float = 0.0) -> None:
        """Stop taking events, let the last batch commit, and leave in-flight steps resumable.

        With a `grace` period, steps under way get that long to finish (and have their outcome
        committed) before the rest are abandoned to the next start. The runs still held are then
        released, so another engine sharing the store can claim them at once.
        """
        self.drain()
        await self.health.stop()
        for task in (self._scheduling, self._claimer, self._renewer, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        tasks = [t for a in self._runs.values() for t in a.tasks.values()]
        if grace > 0 and tasks:
            await asyncio.wait(tasks, timeout=grace)
        # Brokers first, while commits still flow: a message being handled finishes (and is acked)
        # or is refused (and redelivered later); none waits on a commit loop that has stopped.
        for transport in self.transports.values():
            try:
                await transport.close()
            except Exception:
                log.exception("closing transport %s failed", mask_url(transport.url))
        self._closing = True
        tasks = [t for t in tasks if not t.done()]
        for active in self._runs.values():
            self._disarm(active)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flusher is not None:
            assert self._wake is not None
            self._wake.set()
            # With the store down the last batch may never commit: its runs resume on the next
            # start, as after a crash, rather than the process hanging on its way out.
            done, _ = await asyncio.wait([self._flusher], timeout=max(grace, 5.0))
            if not done:
                log.warning("the last commit did not go through; its runs resume on the next start")
                self._flusher.cancel()
                await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self.worker and self.store.shared:
            try:
                await self.store.release_all(self.clock())
            except Exception:
                log.exception("releasing this engine's runs failed; they are taken over later")
        await self.notifier.close()
        await self.http.close()
        await self.results.close()
        self.python.close()
        await self.store.close()

    # -- directory and definitions ------------------------------------------------------------

    def services(self) -> list[Service]:
        return sorted(self._services.values(), key=lambda s: s.name)

    def service(self, name: str) -> Service | None:
        return self._services.get(name)

    async def put_service(self, service: Service) -> None:
        await self.store.put_service(service)
        self._services[service.name] = service

    async def delete_service(self, name: str) -> None:
        if not await self.store.delete_service(name):
            raise NotFound(f"no service named {name!r}")
        self._services.pop(name, None)

    def _clashing_services(
        self, inline: tuple[Service, ...], definition: Workflow | Definition
    ) -> list[Problem]:
        """A document's inline service may add a name, or repeat an entry exactly; it may not
        change a shared one, which other workflows call (`legato service add --replace` does)."""
        chain = definition.chain if isinstance(definition, Definition) else ()
        problems = []
        for service in inline:
            existing = self._services.get(service.name)
            if existing is None or existing == service:
                continue
            where = (
                f"services[{chain.index(service.name)}]" if service.name in chain else "services"
            )
            problems.append(
                Problem(
                    where,
                    f"service {service.name!r} is already in the directory "
                    f"({mask_url(existing.base_url)}) and this document declares it differently "
                    f"({mask_url(service.base_url)}): name it without an address to use it, or "
                    "change it with `legato service add --replace`",
                )
            )
        return problems

    async def register(self, definition: Workflow | Definition) -> WorkflowRecord:
        """Store a workflow (and the services its document declares); same definition, same version."""
        inline: tuple[Service, ...] = ()
        if isinstance(definition, Definition):
            wf, inline = definition.workflow, definition.services
        else:
            wf = definition
        # Check everything before writing anything: a refused definition leaves no service behind.
        self.definition_limits.check_steps(len(wf.steps))
        known = {*self._services, *(s.name for s in inline)}
        # With an external directory, a service it may know is looked up at call time instead.
        problems = [] if self.http.directory else unknown_services(wf.steps, known)
        problems += unknown_transports(wf, set(self.transports))
        problems += self._clashing_services(inline, definition)
        warnings: list[str] = []
        if isinstance(definition, Definition) and definition.chain:
            directory = {**self._services, **{s.name: s for s in inline}}
            unproduced, warnings = unproduced_outputs(
                wf.inputs, wf.outputs, definition.chain, directory
            )
            problems.extend(unproduced)
        if problems:
            raise DefinitionError(problems)
        for warning in warnings:
            log.warning("workflow %s: %s", wf.name, warning)
        try:
            digest = (
                wf.digest
            )  # before any write: a spec JSON cannot encode must leave nothing behind
        except TypeError as exc:
            raise DefinitionError([Problem("", f"cannot be stored as JSON: {exc}")]) from None
        for service in inline:
            await self.put_service(service)
        self._functions.update(wf.functions)
        now = self.clock()
        first = wf.schedule.first(now) if wf.schedule is not None else None  # before any write
        record = await self.store.save_workflow(wf.name, digest, wf.spec)
        self._workflows[(wf.name, record.version)] = wf
        self._latest[wf.name] = max(record.version, self._latest.get(wf.name, 0))
        if wf.schedule is not None:
            rows = {r.workflow: r for r in await self.store.list_schedules()}
            row = rows.get(wf.name)
            if row is None:
                await self.store.add_schedule(wf.name, first, now)
            elif record.created:  # a new calendar: the schedule moves onto it, paused or not
                await self.store.move_schedule(wf.name, wf.schedule.moved(row.next_start, now), now)
            self.scheduler.wake.set()
        elif record.created:
            await self.store.drop_schedule(wf.name)
        if wf.triggers:
            try:
                await self.triggers.subscribe(wf)
            except Exception:  # stored: its triggers are subscribed at the next start
                log.exception("subscribing the triggers of workflow %s failed", wf.name)
        return replace(record, warnings=tuple(warnings)) if warnings else record

    # -- schedules ----------------------------------------------------------------------------

    async def list_schedules(self) -> list[dict[str, Any]]:
        """Each scheduled workflow with its calendar, state and next fire time (None: ended)."""
        found = []
        for row in await self.store.list_schedules():
            try:
                wf = await self._workflow(row.workflow)
            except (NotFound, DefinitionError):
                continue
            if wf.schedule is None:
                continue
            try:
                fire = None if row.paused else wf.schedule.next_fire(row.next_start)
            except (ValueError, OverflowError):  # past what the calendar can count
                fire = None
            found.append(
                {
                    "workflow": row.workflow,
                    "schedule": wf.spec.get("schedule"),
                    "paused": row.paused,
                    "catchup": wf.schedule.catchup,
                    "max_active_runs": wf.schedule.max_active_runs,
                    "tags": list(wf.tags),
                    "next_start": row.next_start,
                    "next_fire": fire,
                }
            )
        return found

    async def tags(self) -> dict[str, list[str]]:
        """Each tag with the workflows whose latest version carries it, by name."""
        found: dict[str, list[str]] = {}
        for record in await self.store.list_workflows():
            raw = record.spec.get("tags") or []
            for tag in [raw] if isinstance(raw, str) else raw:
                found.setdefault(str(tag), []).append(record.name)
        return {tag: sorted(names) for tag, names in sorted(found.items())}

    async def trigger(
        self, workflow: str, conf: dict[str, Any] | None = None, once: Once | None = None
    ) -> str:
        """Start a run by hand with `conf` as its input (checked like any input). A scheduled
        workflow's run also gets `input.schedule`, as its templates expect, with an empty
        interval at now and `manual: true`."""
        wf = await self._workflow(workflow)
        extra = None
        if wf.schedule is not None:
            now = self.clock()
            extra = {"schedule": {**interval_context(now, now), "manual": True}}
        return await self.start_run(workflow, conf, extra=extra, once=once)

    async def pause_schedule(self, workflow: str, paused: bool) -> None:
        """Pause (no interval runs; they are caught up on unpause if the workflow has catchup) or
        unpause a workflow's schedule. NotFound when it has none."""
        if not WORKFLOW_NAME.fullmatch(workflow) or not await self.store.pause_schedule(
            workflow, paused, self.clock()
        ):
            raise NotFound(f"workflow {workflow!r} has no schedule")
        self.scheduler.wake.set()

    def started_elsewhere(self, decision: Decision) -> None:
        """A new run was committed outside the commit loop, held by nobody: tell whoever listens
        and claim it now."""
        for listener in self._listeners:
            try:
                listener(decision)
            except Exception:
                log.exception("decision listener %r failed", listener)
        if decision.outbox:
            self.notifier.wake()
        if decision.run is not None and decision.run.done:
            self._ended(decision.run_id)
        self._claim_soon()

    def scheduled_run_started(self) -> None:
        """The scheduler committed a new run, held by nobody: claim it now."""
        self.stats["scheduled"] += 1
        self._claim_soon()

    async def apply(self, document: str | bytes | dict[str, Any]) -> WorkflowRecord:
        """Validate and register a definition document (YAML, JSON, or an already parsed mapping)."""
        definition = await self._off_loop(
            load_definition,
            document,
            functions=dict(self._functions),
            services=None if self.http.directory else set(self._services),
            limits=self.definition_limits,
        )
        refused = [
            Problem(f"steps.{step.name}.{where}.function", f"{call.function!r} {self._refusal()}")
            for step in definition.workflow.steps.values()
            for where, call in _python_calls(step)
            if call.function not in self._functions
            and self.python.modules is not None
            and self.python.resolve(call.function) is None
        ]
        if refused:
            raise DefinitionError(refused)
        return await self.register(definition)

    async def _off_loop(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Validating a definition compiles each of its templates (a big one takes seconds): in a
        thread, one at a time, so the event loop keeps serving meanwhile."""
        async with self._building:
            return await asyncio.to_thread(fn, *args, **kwargs)

    def _refusal(self) -> str:
        modules = self.python.modules or ()
        allowed = ", ".join(modules) if modules else "none (start the server with --python-module)"
        return f"is not a function defined in a module this engine may import; allowed: {allowed}"

    async def _workflow(self, name: str, version: int | None = None) -> Workflow:
        return (await self.workflow_version(name, version))[0]

    async def workflow_version(self, name: str, version: int | None = None) -> tuple[Workflow, int]:
        """The compiled workflow and its version (the latest when `version` is None)."""
        if not WORKFLOW_NAME.fullmatch(name):  # no such workflow can exist (nor reach the store)
            raise NotFound(f"no workflow named {name!r}")
        if version is None:
            # Other processes sharing the store register versions too: ask it which is latest.
            version = (
                await self.store.latest_version(name)
                if self.store.shared
                else self._latest.get(name)
            )
        if version is not None and (name, version) in self._workflows:
            return self._workflows[(name, version)], version
        record = await self.store.get_workflow(name, version)
        if record is None:
            raise NotFound(
                f"no workflow named {name!r}"
                if version is None
                else f"workflow {name!r} has no version {version}"
            )
        key = (name, record.version)
        if key not in self._workflows:
            built = await self._off_loop(
                build_workflow, record.spec, functions=dict(self._functions)
            )
            self._workflows[key] = built
        if version is None:
            self._latest[name] = record.version
        return self._workflows[key], record.version

    # -- runs ---------------------------------------------------------------------------------

    async def start_run(
        self,
        workflow: str,
        input: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        run_id: str | None = None,
        parent: tuple[str, str, int] | None = None,
        extra: dict[str, Any] | None = None,
        once: Once | None = None,
    ) -> str:
        """Validate the input, commit the new run with its first steps, and return its id.
        (`run_id` and `parent` are for sub-workflows: their parent's attempt fixes the id, and
        the parent hears of the run's end. `extra` joins the input after it was checked. `once`:
        a start with an Idempotency-Key or a caller's `run_id`, see engine/starts.py.)"""
        wf, found = await self.workflow_version(workflow, version)
        data, problems = check_object(wf.inputs, {} if input is None else input, "input")
        if problems:
            raise InputError(problems)
        if extra:
            data = {**data, **extra}
        try:
            orjson.dumps(data)
        except TypeError as exc:  # e.g. an int past 64 bits, a set: the store could never write it
            raise InputError([Problem("input", f"holds a value JSON cannot: {exc}")]) from None
        info = RunInfo(
            id=run_id or new_run_id(),
            workflow=workflow,
            version=found,
            status=PENDING,
            input=data,
            created_at=self.clock(),
            parent=parent,
        )
        if once is not None:
            return await self.starts.start(wf, info, once)
        active = _Active(RunState(info), wf)
        if parent is not None:
            await trees.start_child(self, active)
            return info.id
        failing = self.health.failing("commit")
        if failing is not None:  # it would wait behind a batch that cannot commit
            raise StoreUnavailable("commits failing", failing)
        if self.worker:
            self._runs[info.id] = active
        decision, committed = self._decide(active, Start(), new_run=True)
        try:
            await bounded(self._start_committed(decision, committed))
        except StoreUnavailable:
            self._withdrawn[id(decision)] = decision  # unless its commit is under way already
            raise
        return info.id

    async def _start_committed(self, decision: Decision, committed: asyncio.Future[None]) -> None:
        """Wait for a new run's commit; in a request, give up as soon as a commit holding it fails
        (the caller answers 503 rather than wait out the store timeout)."""
        if REQUEST_LIMIT.get() is None:
            await asyncio.shield(committed)
            return
        gave_up = asyncio.get_running_loop().create_future()
        self._giving_up[id(decision)] = gave_up
        try:
            await asyncio.wait([committed, gave_up], return_when=asyncio.FIRST_COMPLETED)
            if not committed.done():
                raise gave_up.exception() or StoreUnavailable("commit", "failed")
        finally:
            self._giving_up.pop(id(decision), None)
            if gave_up.done():
                gave_up.exception()  # retrieved, even when the commit went in after all

    async def run(
        self, workflow: str, input: dict[str, Any] | None = None, timeout: float | None = None
    ) -> RunState:
        """Start a run and wait for it to end."""
        return await self.wait(await self.start_run(workflow, input), timeout)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunState:
        """Wait until the run ends (or `timeout` passes) and return it as committed."""
        await self.wait_ended(run_id, timeout)
        return await self.get_run(run_id)

    async def wait_ended(self, run_id: str, timeout: float | None = None) -> bool:
        """Wait until the run's end is committed; False if `timeout` passed first, or if the engine
        is draining and the run will end only after a restart (or elsewhere)."""
        if self._draining:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        futures = self._waiters.setdefault(run_id, [])
        futures.append(fut)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            held = run_id in self._runs
            if not held and self._ended_in_store(await self.store.run_status(run_id)):
                return True  # held elsewhere, or parked: the store knows
            if not self.store.shared:
                # This engine is the only one that can end it: its end resolves `fut`.
                try:
                    return await asyncio.wait_for(fut, timeout)
                except TimeoutError:
                    return False
            while True:
                # Ends elsewhere are heard from their engine's notice; a look at the store every
                # few seconds covers a notice lost with a connection.
                left = None if deadline is None else deadline - time.monotonic()
                step = IDLE_POLL if left is None else min(left, IDLE_POLL)
                if step <= 0:
                    return False
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), step)
                except TimeoutError:
                    if self._ended_in_store(await self.store.run_status(run_id)):
                        return True
        finally:
            with contextlib.suppress(ValueError):
                futures.remove(fut)
            if not futures and self._waiters.get(run_id) is futures:
                del self._waiters[run_id]

    @staticmethod
    def _ended_in_store(status: str | None) -> bool:
        return status is None or status not in ACTIVE

    def _ended(self, run_id: str) -> None:
        for fut in self._waiters.pop(run_id, ()):
            if not fut.done():
                fut.set_result(True)

    async def get_run(self, run_id: str) -> RunState:
        state = await self.store.get_run(run_id)
        if state is None:
            raise NotFound(f"no run with id {run_id!r}")
        return state

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        """Cancel a run that has not ended and, in the same transaction, all its descendants;
        returns once that is committed."""
        await trees.cancel(self, run_id, reason)

    async def cancel_runs(self, runs: RunFilter, reason: str = "cancelled by request") -> list[str]:
        """Cancel every run `runs` matches that has not ended, and their descendants, set-wise;
        returns the runs cancelled."""
        return await trees.cancel_runs(self, runs, reason)

    async def retry_runs(self, runs: RunFilter) -> list[str]:
        """Retry every failed or cancelled run `runs` matches (through their inboxes, as `retry`
        does, without waiting for them to start); returns those runs."""
        return await trees.retry_runs(self, runs)

    async def retry(self, run_id: str) -> None:
        """Run a failed or cancelled run again from the steps that did not succeed."""
        held = self._runs.get(run_id)
        if held is not None:
            if held.state.info.status not in RETRIES:
                raise Conflict(f"run {run_id} is still {held.state.info.status}")
            # Its end is decided here but perhaps not committed: once it is, the run is let go,
            # and the retry goes through its inbox like any other.
            await self.wait_ended(run_id, 10.0)
        result = await self._send(
            run_id, Retry(), accept=lambda t: t.run_status in RETRIES, dedupe=f"retry:{run_id}"
        )
        if result.target is None:
            raise NotFound(f"no run with id {run_id!r}")
        if result.duplicate:
            raise Conflict(f"run {run_id} is being retried already")
        if not result.ok:
            raise Conflict(
                f"run {run_id} {result.target.run_status}; only failed or cancelled runs retry"
            )
        await self._settle(run_id, inbox.encode(Retry()))

    async def _settle(self, run_id: str, sent: dict[str, Any], timeout: float = 5.0) -> bool:
        """Wait (briefly) until an engine has applied what was sent and committed it: it has left
        the run's inbox (its row goes in the commit that applied it). Answers say what happened,
        not what is queued. Not the run's status: a retried run that fails again at once is back
        where it was, and waiting for it to leave that status took the whole timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._draining:
            if not any(row.event == sent for row in await self.store.inbox([run_id])):
                return True
            await asyncio.sleep(0.01)
        return False

    def live_run(self, run_id: str) -> RunState | None:
        """The in-memory state of a run that has not ended (None once it has, or if unknown).
        It may be ahead of the store by the batch being committed; read it, do not keep it."""
        active = self._runs.get(run_id)
        return active.state if active is not None else None

    def active_runs(self) -> int:
        return len(self._runs)

    def steps_in_flight(self) -> int:
        return sum(len(a.tasks) for a in self._runs.values())

    def commit_queue(self) -> int:
        """Decisions waiting for the next commit."""
        return len(self._queue)

    def subscribe(self, listener: Callable[[Decision], None]) -> Callable[[], None]:
        """Call `listener` with every decision once it is committed (metrics, live views).

        Listeners run on the event loop in the commit path: they must be quick and must not raise.
        Returns a function that unsubscribes.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- the decide / commit / act loop -------------------------------------------------------

    async def complete(
        self,
        token: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        heartbeat: bool = False,
    ) -> None:
        """A service's callback for an async call: its output, its error, or a heartbeat.

        NotFound for a token this store did not sign (or a run that does not exist); Conflict when
        that attempt is no longer waiting (completed already, timed out, retried, or the run ended).
        Returns once the outcome is committed to the run's inbox (a heartbeat for a run held here:
        once its new deadline is); the engine holding the run applies it within milliseconds.
        """
        ref = self.tokens.read(token) if self.tokens is not None else None
        if ref is None:
            raise NotFound("unknown task token")
        event = Callback(ref.step, ref.attempt, output, error, heartbeat)
        active = self._runs.get(ref.run_id)
        if active is not None:
            current = active.state.step(ref.step)
            if heartbeat and current.status == RUNNING and current.attempt == ref.attempt:
                return  # still sending its answer to the call: alive, and the wait has not begun
            if heartbeat:
                decision, committed = self._decide(active, event)
                if decision.empty:
                    raise Conflict(
                        _not_waiting(ref.step, ref.attempt, current.status, current.attempt)
                    )
                await committed
                return
            # An outcome: refused at once if the state held here says so; otherwise through the
            # inbox like any other, so that two outcomes for one attempt cannot both be taken.
            waiting = current.status == WAITING and current.reason == CALLBACK
            if current.attempt != ref.attempt or not (waiting or current.status == RUNNING):
                raise Conflict(_not_waiting(ref.step, ref.attempt, current.status, current.attempt))

        def accept(t: Any) -> bool:
            if t.run_status != RUNNING or t.step is None or t.step[1] != ref.attempt:
                return False
            return (t.step[0] == WAITING and t.step[2] == CALLBACK) or (
                t.step[0] == RUNNING and not heartbeat
            )

        dedupe = None if heartbeat else f"callback:{ref.run_id}:{ref.step}:{ref.attempt}"
        result = await self._send(ref.run_id, event, step=ref.step, accept=accept, dedupe=dedupe)
        target = result.target
        if target is None:
            raise NotFound("unknown task token")
        if result.ok:
            return
        if target.run_status not in ACTIVE:
            raise Conflict(f"run {ref.run_id} has ended ({target.run_status})")
        status, attempt = (target.step or (PENDING, 0, None))[:2]
        if heartbeat and status == RUNNING and attempt == ref.attempt:
            return
        if result.duplicate:
            raise Conflict(f"step {ref.step!r} attempt {ref.attempt} has its callback already")
        raise Conflict(_not_waiting(ref.step, ref.attempt, status, attempt))

    async def _send(
        self,
        run_id: str,
        event: inbox.Inboxed,
        *,
        step: str | None = None,
        accept: Accept | None = None,
        dedupe: str | None = None,
    ) -> Delivered:
        """Put an event in a run's inbox (checked against the run as stored), then see it applied:
        at once if this engine holds the run, else by the next claim."""
        result = await self.store.deliver(
            run_id, inbox.encode(event), self.clock(), step=step, accept=accept, dedupe=dedupe
        )
        self._arrived(result.runs)
        return result

    def add_transport(self, name: str, transport: Transport | str) -> None:
        """A broker emit steps can name (`transport: <name>`); connected when the engine starts."""
        self.transports[name] = (
            open_transport(transport) if isinstance(transport, str) else transport
        )

    def subscribe_events(self, transport: str, destination: str) -> None:
        """Turn every message on `destination` into an event for listen steps (see `_on_message`)."""
        if transport not in self.transports:
            raise LegatoError(f"no transport named {transport!r}; add it first")
        self._subscriptions.append((transport, destination))

    async def _on_message(self, message: Message) -> None:
        """A broker message as an event. Its type and key come from the headers Legato-Event-Type
        and Legato-Event-Key (or Legato-Run-Id, for a reply to an emit), or from a JSON body
        `{"type", "key", "data"}`; failing both, the type is the destination and the body the data."""
        headers = {k.lower(): v for k, v in message.headers.items()}
        try:
            body: Any = orjson.loads(message.data) if message.data else None
        except orjson.JSONDecodeError:
            body = message.data.decode("utf-8", "replace")
        kind = headers.get("legato-event-type")
        key: Any = headers.get("legato-event-key") or headers.get("legato-run-id")
        data = body
        if kind is None and isinstance(body, dict) and isinstance(body.get("type"), str):
            kind, key, data = body["type"], body.get("key", key), body.get("data")
        await self.publish(kind or message.destination, key, data)

    async def _emit(self, active: _Active, effect: Execute) -> Outcome:
        action = effect.action
        assert isinstance(action, Emit)
        try:
            templates = (action.to, action.message, action.headers)
            request = await resolve_request(effect.request, templates, self.secrets.get, {})
        except MissingSecret as exc:
            return Outcome.failure("config", str(exc))
        transport = self.transports.get(request["transport"])
        if transport is None:
            return Outcome.failure("config", f"no transport named {request['transport']!r}")
        run_id = active.state.info.id
        headers = {
            "Legato-Run-Id": run_id,
            "Legato-Step": effect.step,
            "Idempotency-Key": f"{run_id}:{effect.step}",
            **request.get("headers", {}),
        }
        where = f"{request['transport']}:{mask_markers(effect.request['to'])}"
        limit = effect.timeout or 30.0
        try:
            async with asyncio.timeout(limit):
                await transport.publish(request["to"], orjson.dumps(request["message"]), headers)
        except TimeoutError:
            return Outcome.failure("timeout", f"publishing to {where} took over {limit:g}s")
        except Exception as exc:
            return Outcome.failure(
                "network", f"publishing to {where} failed: {type(exc).__name__}: {exc}"
            )
        return Outcome(True, {"published": where, "run_id": run_id})

    async def publish(
        self, type: str, key: Any, data: Any, *, keep_for: float | None = None
    ) -> PublishResult:
        """Deliver an event to every step waiting for its type and key; if none is, keep it for
        `keep_for` seconds (the engine's `event_retention` by default) for a step that starts
        listening later. Returns once the deliveries (or the kept event) are committed."""
        if self._closing:
            raise LegatoError("the engine is closing; send the event again after it restarts")
        key = event_key(key)
        now = self.clock()
        keep = self.event_retention if keep_for is None else keep_for
        kept = KeptEvent(new_run_id(), type, key, data, now, now + keep) if keep > 0 else None

        def make(step: str, attempt: int) -> dict[str, Any]:
            return inbox.encode(EventArrived(step, attempt, data))

        runs = await self.store.publish(type, key, now, make, kept)
        self._arrived(runs)
        if runs:
            return PublishResult(new_run_id(), runs, None)
        return PublishResult(
            kept.id if kept else new_run_id(), [], kept.expires_at if kept else None
        )

    async def _deliver_kept(self, active: _Active, effect: Listening) -> None:
        """A step began listening: move the oldest kept event that matches to its run's inbox."""
        run_id = active.state.info.id

        def make(kept: KeptEvent) -> dict[str, Any]:
            return inbox.encode(EventArrived(effect.step, effect.attempt, kept.data))

        s = active.state.step(effect.step)
        if s.status != WAITING or s.reason != EVENT or s.attempt != effect.attempt:
            return
        now = self.clock()
        if await self.store.take_kept(effect.type, effect.key, now, run_id, effect.step, make):
            await self._pull([run_id])

    # -- holding runs: claims, inboxes, releases ----------------------------------------------

    def _arrived(self, runs: Collection[str]) -> None:
        """Inbox rows were committed for these runs: apply them if this engine holds the run, or
        see that a claim comes for them."""
        held = [r for r in runs if r in self._runs]
        if held:
            self._background_task(None, self._pull(held))  # holds them from now: no release
        for run_id in runs:
            if run_id in self._parking:
                self._parking[run_id] = True  # claim it again once its release is committed
            elif run_id not in self._runs:
                self._claim_soon()

    def _on_notice(self, notice: dict[str, Any]) -> None:
        """What another engine sharing the store committed (see Store.listen)."""
        self._arrived(notice.get("i", ()))
        for run_id in notice.get("e", ()):
            self._ended(run_id)
        wake = notice.get("w")
        if isinstance(wake, int | float) and (not self._sleep_until or wake < self._sleep_until):
            self._claim_soon()  # also when awake: the round under way may have missed it
        if "d" in notice:
            self._background_task(None, self._reload_services())
        if "x" in notice:  # another engine cancelled runs set-wise: let go of those held here
            self._background_task(None, trees.check_stopped(self))

    def _elsewhere(self, service: str) -> bool:
        """Whether the external directory has a fresh entry for `service` (no store query then)."""
        return self.http.directory is not None and self.http.directory.cached(service) is not None

    def use_directory(self, url: str) -> None:
        """Look services Legato's own directory lacks up at a CoWorks-style directory service
        (`GET {url}/url/{name}`; see engine/directory.py). ValueError for a URL no call can use."""
        self.http.directory = ExternalDirectory(url)

    def add_functions(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        """Let Python steps call these functions by their `module:qualname` paths (a worker's
        DAG folder: it runs the workflows the API server registered, without registering them)."""
        self._functions.update(functions)

    async def _reload_services(self) -> None:
        """Another engine changed the directory: calls from now on use it as stored."""
        services = {s.name: s for s in await self.store.list_services()}
        self._services.clear()
        self._services.update(services)

    def _claim_soon(self) -> None:
        if self.worker and self._claim_now is not None:
            self._claim_now.set()

    async def _claim_forever(self) -> None:
        assert self._claim_now is not None
        while not self._draining:
            try:
                if await self._claim_round() >= CLAIM_BATCH:
                    continue
                nxt = await self.store.next_wake()
            except Exception as exc:
                store_failed(log, exc, "claiming runs failed; trying again in a second")
                await asyncio.sleep(1.0)
                continue
            now = self.clock()
            delay = IDLE_POLL if nxt is None else min(max(nxt - now, 0.0), IDLE_POLL)
            self._sleep_until = now + delay
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._claim_now.wait(), delay)
                    # Woken by a notice: let the runs arriving with it gather, one claim for all.
                    await asyncio.sleep(CLAIM_GATHER)
            self._claim_now.clear()
            self._sleep_until = 0.0

    async def _claim_round(self) -> int:
        """Claim what is due and take it in hand; the number claimed."""
        if self._draining:
            return 0
        if self._claim_now is not None:
            self._claim_now.clear()
        claimed = await self.store.claim(self.clock(), CLAIM_BATCH)
        failed: list[str] = []
        for i, c in enumerate(claimed):
            if i and i % 50 == 0:
                await asyncio.sleep(0)  # a big claim does not hold up requests and commits
            try:
                await self._adopt(c)
            except Exception:
                log.exception("taking run %s in hand failed; handing it back", c.state.info.id)
                self._runs.pop(c.state.info.id, None)
                failed.append(c.state.info.id)
        if failed:  # claimed but not held: any engine takes them again in a second, in full
            await self.store.hand_back(failed, self.clock() + 1.0)
        self.stats["claimed"] += len(claimed)
        return len(claimed)

    async def _adopt(self, claim: Claimed) -> None:
        state = claim.state
        run_id = state.info.id
        if run_id in self._runs:  # cannot happen: a claim never finds a run this engine holds
            log.error("claimed run %s, which this engine holds already", run_id)
            return
        try:
            wf = await self._workflow(state.info.workflow, state.info.version)
        except (NotFound, DefinitionError) as exc:
            log.error("cannot resume run %s: %s", run_id, exc)
            wf = None
        if wf is None:
            decision = _broken(state, LegatoError("its workflow cannot be loaded"), self.clock())
            if state.info.parent is not None and decision.run is not None:
                decision.deliveries.append(_child_report(decision.run))
            self._queue_decision(None, decision)
            return
        active = self._runs[run_id] = _Active(state, wf)
        self._arm_deadline(active)
        resumed = self._decide(active, Resume())[0]
        if not claim.taken_over:
            # Parked by a live engine, which released it only once its listening and child
            # starting were done: re-issue the calls and timers, not those.
            resumed.effects = [
                e for e in resumed.effects if not isinstance(e, Listening | StartChild)
            ]
        for row in claim.inbox:
            self._apply(active, row)

    def _apply(self, active: _Active, row: InboxRow) -> None:
        if row.id in self._applying or row.id in self._applied:
            return
        if active.ending:
            # Its end is decided here, not yet let go: the row waits in the inbox, and the run is
            # claimed again for it once the end is committed (a retry, say).
            return
        self._applying.add(row.id)
        try:
            event = inbox.decode(row.event)
        except (KeyError, TypeError) as exc:
            log.error("run %s: unreadable inbox row %s dropped: %s", row.run_id, row.id, exc)
            self._queue_decision(active, Decision(row.run_id, consumed_inbox=[row.id]))
            return
        decision = self._decide(active, event)[0]
        decision.consumed_inbox.append(row.id)

    def _pull(self, run_ids: list[str]) -> Coroutine[Any, Any, None]:
        """Apply the inbox rows of runs this engine holds. They count as busy from this call
        (not from when the coroutine starts), so none is released before its rows are read."""
        held = [a for a in (self._runs.get(r) for r in run_ids) if a is not None]
        for active in held:
            active.busy += 1
        return self._pull_held(held)

    async def _pull_held(self, held: list[_Active]) -> None:
        try:
            rows = await self.store.inbox([a.state.info.id for a in held])
            for row in rows:
                holding = self._runs.get(row.run_id)
                if holding is not None and not self._closing:
                    self._apply(holding, row)
        finally:
            for active in held:
                active.busy -= 1
                self._maybe_park(active)

    def _maybe_park(self, active: _Active) -> None:
        """Release a run that only waits: it lives in the store, its next due time indexed."""
        if self._draining or active.tasks or active.busy or active.pending:
            return
        state = active.state
        run_id = state.info.id
        if self._runs.get(run_id) is not active:
            return
        if state.info.done:
            wake = None
        else:
            for name, s in state.steps.items():
                if s.status == RUNNING and name not in active.wf.steps:
                    return  # a map's child call
                if s.status == RUNNING and not isinstance(active.wf.steps[name].action, MapOver):
                    return
            wake = _due(state)
            if wake is not None and wake - self.clock() < PARK_AFTER:
                return  # due soon: its timer stays armed here
        del self._runs[run_id]
        self._disarm(active)
        self._parking[run_id] = False
        self.stats["parked"] += 1
        self._queue_decision(active, Decision(run_id, release=True, wake_at=wake))

    def _disarm(self, active: _Active) -> None:
        for handle in active.timers.values():
            handle.cancel()
        active.timers.clear()
        if active.deadline is not None:
            active.deadline.cancel()
            active.deadline = None

    async def _watch_forever(self) -> None:
        """Keep hearing other engines: after a lost connection, listen again and look for what
        the notices missed (waits also look at the store on their own, every few seconds)."""
        while True:
            await asyncio.sleep(IDLE_POLL)
            try:
                if await self.store.keep_listening():
                    self._claim_soon()
                    await trees.check_stopped(self)  # a set-wise cancel's notice may be lost
                held = list(self._runs)
                for i in range(0, len(held), CLAIM_BATCH):
                    await self._pull(held[i : i + CLAIM_BATCH])
            except Exception as exc:
                store_failed(log, exc, "checking the notice connection failed")

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.store.renew(self.clock(), [*self._runs, *self._parking])
            except Exception as exc:
                self.health.failed("renew", exc)
                store_failed(log, exc, "renewing leases failed; trying again")
            else:
                self.health.ok("renew")

    # -- the decide / commit / act loop -------------------------------------------------------

    def _event(
        self, active: _Active, event: Event, *, new_run: bool = False
    ) -> asyncio.Future[None]:
        """Decide, keep the new state in memory, queue it for commit; the future resolves after commit."""
        return self._decide(active, event, new_run=new_run)[1]

    def _service_retry(self, name: str) -> RetryPolicy | None:
        """A service's own retry setting, for steps nobody set one for (see `decide`)."""
        service = self._services.get(name)
        return service.retry if service is not None else None

    def _decide(
        self, active: _Active, event: Event, *, new_run: bool = False
    ) -> tuple[Decision, asyncio.Future[None]]:
        now = self.clock()
        try:
            decision = decide(
                active.wf, active.state, event, now, random.random(), self._service_retry
            )
        except Exception as exc:  # a decider bug must end the run visibly, not strand it
            log_decide_failure(active.state.info.id, event, exc)
            decision = _broken(active.state, exc, now)
        decision.new_run = new_run
        state = active.state
        ended = not state.info.done and decision.run is not None and decision.run.done
        if decision.run is not None:
            state.info = decision.run
            active.ending = decision.run.done
        if decision.steps:
            state.steps.update(decision.steps)
        if ended and state.info.parent is not None:
            decision.deliveries.append(_child_report(state.info))
        decision.outbox = outgoing(active.wf.notify, decision, state.info, new_delivery_id)
        return decision, self._queue_decision(active, decision)

    def _queue_decision(self, active: _Active | None, decision: Decision) -> asyncio.Future[None]:
        if active is not None:
            active.pending += 1
        self._queue.append((active, decision))
        assert self._wake is not None and self._batch is not None
        self._wake.set()
        return self._batch

    async def _flush_forever(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                if self._closing:
                    return
                continue
            batch, done = self._queue, self._batch
            self._queue, self._batch = [], loop.create_future()
            batch, committed = await self._commit(batch)
            decisions = [d for _, d in batch]
            lost = committed.lost
            if committed.due:
                self._claim_soon()  # a run it let go of has something in its inbox already
            self.stats["commits"] += 1
            self.stats["decisions"] += len(batch)
            assert done is not None
            done.set_result(None)
            touched: dict[str, _Active] = {}
            for holding, decision in batch:
                self._committed(holding, decision, lost, touched)
            for listener in self._listeners:
                for decision in decisions:
                    try:
                        listener(decision)
                    except Exception:
                        log.exception("decision listener %r failed", listener)
            if any(d.outbox for d in decisions):
                self.notifier.wake()  # written with the batch; sent from the background
            for active in touched.values():
                self._maybe_park(active)
            if self._queue:
                self._wake.set()

    def _committed(
        self,
        active: _Active | None,
        decision: Decision,
        lost: frozenset[str],
        touched: dict[str, _Active],
    ) -> None:
        run_id = decision.run_id
        for row in decision.consumed_inbox:
            self._applying.discard(row)
            self._applied[row] = None  # a read begun before this commit may return it again
            if len(self._applied) > 10_000:
                del self._applied[next(iter(self._applied))]
        # A released run is claimed again at once if something arrived for it meanwhile, or soon
        # if it is due before the claimer would look anyway.
        rearm = self._parking.pop(run_id, False) if decision.release else False
        wake = decision.wake_at if decision.release else None
        if rearm or (
            wake is not None
            and wake < self.clock() + IDLE_POLL
            and (not self._sleep_until or wake < self._sleep_until)
        ):
            self._claim_soon()
        if decision.deliveries and run_id not in lost:
            self._arrived([d.run_id for d in decision.deliveries])
        if decision.run is not None and decision.run.done and run_id not in lost:
            self._ended(run_id)
        if active is None:
            return
        active.pending -= 1
        if self._runs.get(run_id) is not active:
            return  # released (or ended) meanwhile: nothing of it is held here any more
        if run_id in lost:
            log.warning("run %s was taken over by another engine; letting it go", run_id)
            del self._runs[run_id]
            self._disarm(active)
            for t in active.tasks.values():
                t.cancel()
            return
        touched[run_id] = active
        self._act(active, decision)

    async def _commit(
        self, batch: list[tuple[_Active | None, Decision]]
    ) -> tuple[list[tuple[_Active | None, Decision]], Committed]:
        """Commit the batch, trying again until it goes in; the batch as committed (without the
        starts withdrawn meanwhile)."""
        delay = 0.05
        while True:
            batch = self._without_withdrawn(batch)
            try:
                committed = await self.store.commit([d for _, d in batch])
            except Exception as exc:
                # Effects wait for the commit, so nothing acts on state that is not durable yet.
                self.health.failed("commit", exc)
                for _, decision in batch:
                    gave_up = self._giving_up.pop(id(decision), None)
                    if gave_up is not None and not gave_up.done():
                        gave_up.set_exception(
                            unavailable(exc) or StoreUnavailable("commit", str(exc))
                        )
                store_failed(
                    log, exc, "commit of %d decisions failed; retrying in %.2fs", len(batch), delay
                )
                await self.health.pause(delay)  # or until the store answers again
                delay = min(delay * 2, 5.0)
                continue
            self.health.ok("commit")
            if self._withdrawn:  # withdrawn too late: those runs are durable, and go on
                for _, decision in batch:
                    self._withdrawn.pop(id(decision), None)
            if self._unsure:
                try:
                    await self.store.hand_back(self._unsure, self.clock())
                    self._unsure = []
                except Exception as exc:
                    store_failed(log, exc, "handing back withdrawn starts failed; again later")
            return batch, committed

    def _without_withdrawn(
        self, batch: list[tuple[_Active | None, Decision]]
    ) -> list[tuple[_Active | None, Decision]]:
        if not self._withdrawn:
            return batch
        kept = []
        for holding, decision in batch:
            if self._withdrawn.pop(id(decision), None) is None:
                kept.append((holding, decision))
                continue
            log.debug("run %s was not started: its start gave up on the store", decision.run_id)
            self._unsure.append(decision.run_id)
            if holding is not None:
                holding.pending -= 1
                if self._runs.get(decision.run_id) is holding:
                    del self._runs[decision.run_id]
        return kept

    def _act(self, active: _Active, decision: Decision) -> None:
        self.stats["step_transitions"] += len(decision.steps)
        if decision.run is not None:
            self._arm_deadline(active)
        for effect in decision.effects:
            if isinstance(effect, Execute):
                if not self._draining:
                    active.tasks[effect.step] = asyncio.create_task(self._execute(active, effect))
            elif isinstance(effect, Schedule):
                self._schedule(active, effect)
            elif isinstance(effect, StartChild):
                self._background_task(active, self._until_done(active, self._start_child, effect))
            elif isinstance(effect, Fetch):
                self._background_task(active, self._fetch(active, effect))
            elif isinstance(effect, Listening):
                self._background_task(active, self._until_done(active, self._deliver_kept, effect))
            elif isinstance(effect, Abort):
                self._abort_child(active, effect.step)
                task = active.tasks.pop(effect.step, None)
                if task is not None:
                    task.cancel()
                handle = active.timers.pop(effect.step, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(effect, Finished):
                self._finished(active)

    def _background_task(self, active: _Active | None, work: Coroutine[Any, Any, None]) -> None:
        """Run an effect's I/O (start a child, look for a result or a kept event) beside the loop,
        held until done, the run with it; a draining engine starts none (the next start re-issues
        them)."""
        if self._draining:
            work.close()
            return
        task = asyncio.create_task(work)
        self._background.add(task)
        if active is not None:
            active.busy += 1

        def done(task: asyncio.Task[None]) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("background work failed", exc_info=task.exception())
            if active is not None:
                active.busy -= 1
                self._maybe_park(active)

        task.add_done_callback(done)

    async def _until_done(
        self,
        active: _Active,
        work: Callable[[_Active, Any], Coroutine[Any, Any, None]],
        effect: StartChild | Listening,
    ) -> None:
        """Carry out an effect no later event re-issues (starting a child, taking a kept event),
        trying again while it fails: the run stays held until it is done."""
        delay = 0.5
        while True:
            try:
                await work(active, effect)
                return
            except Exception:
                log.exception(
                    "%s for run %s failed; again in %.1fs", effect, active.state.info.id, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            if self._draining or self._runs.get(active.state.info.id) is not active:
                return  # a draining engine hands the run over for a full resume

    def _arm_deadline(self, active: _Active) -> None:
        if active.deadline is not None:
            active.deadline.cancel()
            active.deadline = None
        info = active.state.info
        if info.status == RUNNING and info.deadline is not None and not self._closing:
            delay = max(0.0, info.deadline - self.clock())
            active.deadline = asyncio.get_running_loop().call_later(
                delay, self._on_timer, active, Timeout()
            )

    def _schedule(self, active: _Active, effect: Schedule) -> None:
        if self._draining:
            return
        delay = max(0.0, effect.at - self.clock())
        old = active.timers.get(effect.step)
        if old is not None:  # a heartbeat moved the deadline
            old.cancel()
        active.timers[effect.step] = asyncio.get_running_loop().call_later(
            delay, self._on_timer, active, Wake(effect.step)
        )

    def _on_timer(self, active: _Active, event: Event) -> None:
        if isinstance(event, Wake):
            active.timers.pop(event.step, None)
        if self._runs.get(active.state.info.id) is active and not self._draining:
            self._event(active, event)

    async def _fetch(self, active: _Active, effect: Fetch) -> None:
        where = effect.location
        try:
            if "url" in where:
                step = active.wf.steps.get(effect.step)
                action = step.action if step is not None else None
                follow = isinstance(action, HttpCall) and self.http.follows(action)
                templates = poll_templates(active.wf, effect.step)
                outcome = await self.http.fetch(where, templates, follow)
            else:
                outcome = await self.results.fetch(where["bucket"], where["key"])
        except MissingSecret as exc:
            outcome = Outcome.failure("config", str(exc))
        except Exception as exc:  # a reader's bug must fail the step, not strand it
            log.exception("fetching %s for %s failed", mask_request(where), active.state.info.id)
            outcome = Outcome.failure("exception", f"{type(exc).__name__}: {exc}")
        if self._runs.get(active.state.info.id) is not active or self._closing:
            return
        if outcome is None:
            self._event(active, Fetched(effect.step, effect.attempt, False))
        else:
            self._event(
                active,
                Fetched(effect.step, effect.attempt, outcome.ok, outcome.output, outcome.error),
            )

    async def _call_async(self, active: _Active, effect: Execute, action: HttpCall) -> Outcome:
        """Send an async call with where and how to report back; the step's timeout bounds the wait
        for the callback, not this request (which has the service's timeout)."""
        if self.callback_base is None or self.tokens is None:
            return Outcome.failure(
                "config", "an async call needs a callback address: run it under `legato serve`"
            )
        run_id = active.state.info.id
        token = self.tokens.issue(run_id, effect.step, effect.attempt)
        extra = {
            "Legato-Callback-Url": f"{self.callback_base.rstrip('/')}/api/callbacks/{token}",
            "Legato-Task-Token": token,
            "Idempotency-Key": _job_key(run_id, effect.step, effect.attempt),
        }
        return await self.http.execute(run_id, effect.step, action, effect.request, None, extra)

    def _still_waits_for(self, active: _Active, effect: StartChild) -> bool:
        """Is the parent's step still waiting for this child (not cancelled, timed out or moved on)?"""
        if self._runs.get(active.state.info.id) is not active:
            return False
        s = active.state.step(effect.step)
        return s.status == WAITING and s.reason == CHILD and s.attempt == effect.attempt

    async def _start_child(self, active: _Active, effect: StartChild) -> None:
        """Start the sub-workflow's run once (its id is fixed by the attempt); its end reaches the
        parent's inbox in the same commit (see `_child_report`)."""
        parent = active.state.info.id
        if not self._still_waits_for(active, effect):
            return
        async with self._child_starts:
            await self._start_child_now(active, effect, parent)
            # On SQLite a start commits on the loop without yielding: holding the turn across
            # one yield lets each pass of the loop take only a few starts, and requests in between.
            await asyncio.sleep(0)

    async def _start_child_now(self, active: _Active, effect: StartChild, parent: str) -> None:
        error: dict[str, Any] | None = None
        try:
            existing = await self.store.get_run(effect.run_id)
            if existing is not None:
                trees.check_child(existing.info, parent, effect.workflow)
                if existing.info.done and self._still_waits_for(active, effect):
                    self._decide(active, _child_done(effect.step, effect.attempt, existing.info))
                return
            if not self._still_waits_for(active, effect):
                return
            await self.start_run(
                effect.workflow,
                effect.input,
                version=effect.version,
                run_id=effect.run_id,
                parent=(parent, effect.step, effect.attempt),
            )
            if not self._still_waits_for(active, effect):
                await self._cancel_child(effect.run_id, parent)
        except InputError as exc:
            error = {"kind": "input", "message": f"sub-workflow {effect.workflow!r}: {exc}"}
        except LimitReached as exc:
            error = {"kind": "limit", "message": str(exc)}
        except trees.IdTaken as exc:
            error = {"kind": "conflict", "message": str(exc)}
        except (NotFound, DefinitionError) as exc:
            error = {"kind": "config", "message": f"sub-workflow {effect.workflow!r}: {exc}"}
        if error is not None and self._still_waits_for(active, effect):
            self._event(active, ChildDone(effect.step, effect.attempt, False, None, error))

    async def _cancel_child(self, child: str, parent: str) -> None:
        """Cancel a sub-workflow's run and its descendants, set-wise (see Store.cancel_runs)."""
        reason = f"its parent run {parent} stopped"
        await trees.cancel_runs(self, RunFilter(ids=(child,)), reason)

    def _abort_child(self, active: _Active, step: str) -> None:
        """A cancelled sub-workflow step cancels the run it started."""
        definition = active.wf.steps.get(step)
        state = active.state.steps.get(step)
        if definition is None or definition.kind != "workflow" or state is None:
            return
        child = (state.request or {}).get("run_id")
        if child:
            self._background_task(None, self._cancel_child(child, active.state.info.id))

    def _finished(self, active: _Active) -> None:
        run_id = active.state.info.id
        self._runs.pop(run_id, None)
        self._ended(run_id)
        self._disarm(active)
        for t in active.tasks.values():
            t.cancel()

    async def _execute(self, active: _Active, effect: Execute) -> None:
        started = self.clock()
        try:
            service = getattr(effect.action, "service", None)
            if (
                service is not None
                and service not in self._services
                and not self._elsewhere(service)
            ):
                await self._reload_services()  # registered through another engine just now
            if isinstance(effect.action, Emit):
                outcome = await self._emit(active, effect)
            elif isinstance(effect.action, HttpCall) and effect.action.callback:
                outcome = await self._call_async(active, effect, effect.action)
            elif isinstance(effect.action, HttpCall) and effect.action.poll is not None:
                # The service is told where to leave the result; the step's timeout bounds the
                # whole wait for it, not this request (which has the service's timeout).
                extra = None
                poll = effect.action.poll
                run_id = active.state.info.id
                if poll.bucket is not None:
                    key = result_key(run_id, effect.step, effect.attempt)
                    extra = {"Legato-Result-Bucket": poll.bucket, "Legato-Result-Key": key}
                    if poll.bucket_header:
                        extra[poll.bucket_header] = poll.bucket
                    if poll.key_header:
                        extra[poll.key_header] = key
                extra = {
                    **(extra or {}),
                    "Idempotency-Key": _job_key(run_id, effect.step, effect.attempt),
                }
                outcome = await self.http.execute(
                    active.state.info.id, effect.step, effect.action, effect.request, None, extra
                )
            elif isinstance(effect.action, HttpCall):
                outcome = await self.http.execute(
                    active.state.info.id, effect.step, effect.action, effect.request, effect.timeout
                )
            else:
                outcome = await self.python.execute(effect.request, effect.timeout or None)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # an executor bug must not strand the run
            log.exception("executor failed on %s/%s", active.state.info.id, effect.step)
            outcome = Outcome.failure("exception", f"{type(exc).__name__}: {exc}")
        if active.tasks.get(effect.step) is asyncio.current_task():
            del active.tasks[effect.step]
        if self._closing or self._runs.get(active.state.info.id) is not active:
            return
        done = StepDone(
            effect.step,
            effect.attempt,
            outcome.ok,
            outcome.output,
            outcome.error,
            started,
            self.clock(),
        )
        decision, _ = self._decide(active, done)
        if outcome.logs and not decision.empty:  # written with the outcome, in its commit
            run_id = active.state.info.id
            decision.logs.append(StepLogs(run_id, effect.step, effect.attempt, outcome.logs))
