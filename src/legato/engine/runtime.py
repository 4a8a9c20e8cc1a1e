"""The Engine: applies the decider's decisions durably and carries out their effects on asyncio.

Each event (a run started, a step answered, a timer fired) goes through `decide`; the new state is kept in
memory at once, queued for the store, and its effects (calls, timers) run only after the batch holding it
is committed. Batches form by themselves: whatever piles up while one commit is under way goes in the next
(group commit). A run in memory costs its state and nothing else: no coroutine waits on its behalf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from legato.engine.decider import CHILD, EVENT, decide, event_key
from legato.engine.http_executor import HttpExecutor
from legato.engine.ids import new_run_id, result_key
from legato.engine.outcome import Outcome
from legato.engine.python_executor import PythonExecutor
from legato.engine.results import S3Results
from legato.engine.state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING,
    Abort,
    Callback,
    Cancel,
    ChildDone,
    Decision,
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
    Timeout,
    Wake,
)
from legato.engine.tokens import TaskTokens
from legato.errors import (
    Conflict,
    DefinitionError,
    InputError,
    LegatoError,
    NotFound,
    Problem,
)
from legato.formats.loader import Definition, load_definition
from legato.model.build import build_workflow, unknown_services
from legato.model.fields import check_object
from legato.model.service import Service
from legato.model.workflow import Emit, HttpCall, MapOver, PythonCall, Step, Workflow
from legato.store.protocol import KeptEvent, Store, WorkflowRecord, open_store
from legato.transports import Message, Transport, open_transport

log = logging.getLogger("legato.engine")
DEFAULT_EVENT_RETENTION = 3600.0


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


def _python_calls(step: Step) -> list[tuple[str, PythonCall]]:
    action = step.action
    if isinstance(action, PythonCall):
        return [("python", action)]
    if isinstance(action, MapOver) and isinstance(action.action, PythonCall):
        return [("map.step.python", action.action)]
    return []


@dataclass(slots=True)
class _Active:
    state: RunState
    wf: Workflow
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    deadline: asyncio.TimerHandle | None = None
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class Engine:
    """Use as `async with Engine.open("sqlite:///legato.db") as engine:`."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        python_modules: Collection[str] | None = None,
    ) -> None:
        """`python_modules`, when given, are the only modules a definition document's Python steps
        may import functions from (a server passes its allow-list; None allows any import)."""
        self.store = store
        self.clock = clock
        self._services: dict[str, Service] = {}
        self._functions: dict[str, Callable[..., Any]] = {}
        self._workflows: dict[tuple[str, int], Workflow] = {}
        self._latest: dict[str, int] = {}
        self._runs: dict[str, _Active] = {}
        self._queue: list[Decision] = []
        self._batch: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._draining = False
        self._retrying: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._listeners: list[Callable[[Decision], None]] = []
        self.http = HttpExecutor(self._services.get)
        self.tokens: TaskTokens | None = None
        # Where services send callbacks: `legato serve` sets it to its own address (or --public-url).
        self.callback_base: str | None = None
        self.event_retention = DEFAULT_EVENT_RETENTION
        self.transports: dict[str, Transport] = {}
        self.results = S3Results()
        self._subscriptions: list[tuple[str, str]] = []
        self._claimed_events: set[str] = set()
        # A sub-workflow run's id -> (parent run, step, attempt) waiting for it to end.
        self._child_waiters: dict[str, tuple[str, str, int]] = {}
        self._aborted_children: set[str] = set()
        self.python = PythonExecutor(self._functions, python_modules)
        self.stats = {"commits": 0, "decisions": 0, "step_transitions": 0}

    @classmethod
    def open(
        cls,
        url: str = "sqlite:///legato.db",
        *,
        python_modules: Collection[str] | None = None,
        migrate: bool = False,
    ) -> Engine:
        """`migrate`: upgrade a database with an older schema (a new one is always created)."""
        return cls(open_store(url, migrate=migrate), python_modules=python_modules)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, load the directory and resume every run that had not ended."""
        await self.store.open()
        self.tokens = TaskTokens(await self.store.secret("callbacks"))
        for name, transport in self.transports.items():
            try:
                await transport.connect()
            except Exception as exc:
                raise LegatoError(
                    f"cannot connect transport {name!r} ({transport.url}): {exc}"
                ) from exc
        for name, destination in self._subscriptions:
            await self.transports[name].subscribe(destination, self._on_message)
        self._wake = asyncio.Event()
        self._batch = asyncio.get_running_loop().create_future()
        self._flusher = asyncio.create_task(self._flush_forever(), name="legato-commit")
        for service in await self.store.list_services():
            self._services[service.name] = service
        for state in await self.store.load_active_runs():
            try:
                wf = await self._workflow(state.info.workflow, state.info.version)
            except (NotFound, DefinitionError) as exc:
                log.error("cannot resume run %s: %s", state.info.id, exc)
                continue
            active = self._runs[state.info.id] = _Active(state, wf)
            self._arm_deadline(active)
            self._event(active, Resume())

    def drain(self) -> None:
        """Start no new step from now on; steps under way finish and their outcomes are committed.

        What the drain leaves undone stays in the store as running or pending, and the next engine on
        the same database resumes it (with the same Idempotency-Key for a repeated call).
        """
        self._draining = True
        for active in self._runs.values():
            for fut in active.waiters:
                if not fut.done():
                    fut.set_result(None)
            active.waiters.clear()

    @property
    def draining(self) -> bool:
        return self._draining

    async def close(self, grace: float = 0.0) -> None:
        """Stop taking events, let the last batch commit, and leave in-flight steps resumable.

        With a `grace` period, steps under way get that long to finish (and have their outcome
        committed) before the rest are abandoned to the next start.
        """
        self.drain()
        tasks = [t for a in self._runs.values() for t in a.tasks.values()]
        if grace > 0 and tasks:
            await asyncio.wait(tasks, timeout=grace)
        # Brokers first, while commits still flow: a message being handled finishes (and is acked)
        # or is refused (and redelivered later); none waits on a commit loop that has stopped.
        for transport in self.transports.values():
            try:
                await transport.close()
            except Exception:
                log.exception("closing transport %s failed", transport.url)
        self._closing = True
        tasks = [t for t in tasks if not t.done()]
        for active in self._runs.values():
            for handle in active.timers.values():
                handle.cancel()
            if active.deadline:
                active.deadline.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flusher is not None:
            assert self._wake is not None
            self._wake.set()
            await self._flusher
            self._flusher = None
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

    async def register(self, definition: Workflow | Definition) -> WorkflowRecord:
        """Store a workflow (and the services its document declares); same definition, same version."""
        inline: tuple[Service, ...] = ()
        if isinstance(definition, Definition):
            wf, inline = definition.workflow, definition.services
        else:
            wf = definition
        # Check everything before writing anything: a refused definition leaves no service behind.
        known = {*self._services, *(s.name for s in inline)}
        problems = unknown_services(wf.steps, known)
        if problems:
            raise DefinitionError(problems)
        try:
            digest = (
                wf.digest
            )  # before any write: a spec JSON cannot encode must leave nothing behind
        except TypeError as exc:
            raise DefinitionError([Problem("", f"cannot be stored as JSON: {exc}")]) from None
        for service in inline:
            await self.put_service(service)
        self._functions.update(wf.functions)
        record = await self.store.save_workflow(wf.name, digest, wf.spec)
        self._workflows[(wf.name, record.version)] = wf
        self._latest[wf.name] = max(record.version, self._latest.get(wf.name, 0))
        return record

    async def apply(self, document: str | bytes | dict[str, Any]) -> WorkflowRecord:
        """Validate and register a definition document (YAML, JSON, or an already parsed mapping)."""
        definition = load_definition(
            document, functions=self._functions, services=self._services.keys()
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

    def _refusal(self) -> str:
        modules = self.python.modules or ()
        allowed = ", ".join(modules) if modules else "none (start the server with --python-module)"
        return f"is not a function defined in a module this engine may import; allowed: {allowed}"

    async def _workflow(self, name: str, version: int | None = None) -> Workflow:
        return (await self.workflow_version(name, version))[0]

    async def workflow_version(self, name: str, version: int | None = None) -> tuple[Workflow, int]:
        """The compiled workflow and its version (the latest when `version` is None)."""
        if version is None:
            version = self._latest.get(name)
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
            self._workflows[key] = build_workflow(record.spec, functions=self._functions)
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
    ) -> str:
        """Validate the input, commit the new run with its first steps, and return its id.
        (`run_id` is for sub-workflows, whose ids their parent's attempt fixes.)"""
        wf, found = await self.workflow_version(workflow, version)
        data, problems = check_object(wf.inputs, {} if input is None else input, "input")
        if problems:
            raise InputError(problems)
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
        )
        active = self._runs[info.id] = _Active(RunState(info), wf)
        await self._event(active, Start(), new_run=True)
        return info.id

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
        is draining and the run will end only after a restart. Reads nothing."""
        active = self._runs.get(run_id)
        if active is None:
            return True
        if self._draining:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        active.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if not fut.done() or fut.cancelled():
                with contextlib.suppress(ValueError):
                    active.waiters.remove(fut)
        return run_id not in self._runs

    async def get_run(self, run_id: str) -> RunState:
        state = await self.store.get_run(run_id)
        if state is None:
            raise NotFound(f"no run with id {run_id!r}")
        return state

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        active = self._runs.get(run_id)
        if active is None:
            state = await self.get_run(run_id)
            raise Conflict(f"run {run_id} has already ended ({state.info.status})")
        await self._event(active, Cancel(reason))

    async def retry(self, run_id: str) -> None:
        """Run a failed or cancelled run again from the steps that did not succeed."""
        if run_id in self._runs:
            raise Conflict(f"run {run_id} is still {self._runs[run_id].state.info.status}")
        if run_id in self._retrying:  # another retry of it is between its reads (they yield)
            raise Conflict(f"run {run_id} is being retried already")
        self._retrying.add(run_id)
        try:
            state = await self.get_run(run_id)
            if state.info.status not in (FAILED, CANCELLED):
                raise Conflict(
                    f"run {run_id} {state.info.status}; only failed or cancelled runs retry"
                )
            wf = await self._workflow(state.info.workflow, state.info.version)
            active = self._runs[run_id] = _Active(state, wf)
        finally:
            self._retrying.discard(run_id)
        await self._event(active, Retry())

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
        Returns once the outcome is committed.
        """
        ref = self.tokens.read(token) if self.tokens is not None else None
        if ref is None:
            raise NotFound("unknown task token")
        active = self._runs.get(ref.run_id)
        if active is None:
            state = await self.store.get_run(ref.run_id)
            if state is None:
                raise NotFound("unknown task token")
            raise Conflict(f"run {ref.run_id} has ended ({state.info.status})")
        current = active.state.step(ref.step)
        if heartbeat and current.status == RUNNING and current.attempt == ref.attempt:
            return  # still sending its answer to the call: alive, and the wait has not begun
        decision, committed = self._decide(
            active, Callback(ref.step, ref.attempt, output, error, heartbeat)
        )
        if decision.empty:
            s = active.state.step(ref.step)
            raise Conflict(
                f"step {ref.step!r} attempt {ref.attempt} is not waiting for a callback "
                f"(it is {s.status}, attempt {s.attempt})"
            )
        await committed

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
        request = effect.request
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
        where = f"{request['transport']}:{request['to']}"
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
        delivered: list[str] = []
        commits: list[asyncio.Future[None]] = []
        for run_id, active in list(self._runs.items()):
            for s in list(active.state.steps.values()):
                if s.status != WAITING or s.reason != EVENT or not s.request:
                    continue
                if s.request.get("event") != type or s.request.get("key") != key:
                    continue
                decision, committed = self._decide(active, EventArrived(s.name, s.attempt, data))
                if not decision.empty:
                    delivered.append(run_id)
                    commits.append(committed)
        if commits:
            await asyncio.gather(*commits)
            return PublishResult(new_run_id(), delivered, None)
        keep = self.event_retention if keep_for is None else keep_for
        kept = KeptEvent(new_run_id(), type, key, data, now, now + keep)
        if keep > 0:
            await self.store.keep_event(kept)
        return PublishResult(kept.id, [], kept.expires_at if keep > 0 else None)

    async def _deliver_kept(self, active: _Active, effect: Listening) -> None:
        """A step began listening: give it the oldest kept event that matches, if there is one."""
        try:
            events = await self.store.kept_events(effect.type, effect.key, self.clock())
        except Exception:
            log.exception("reading kept events for %s failed", effect.step)
            return
        for kept in events:
            if kept.id in self._claimed_events:
                continue
            if self._runs.get(active.state.info.id) is not active or self._draining:
                return
            self._claimed_events.add(kept.id)
            try:
                arrived = EventArrived(effect.step, effect.attempt, kept.data, kept.id)
                decision, committed = self._decide(active, arrived)
                if not decision.empty:
                    await committed
            finally:
                self._claimed_events.discard(kept.id)
            return

    def _event(
        self, active: _Active, event: Event, *, new_run: bool = False
    ) -> asyncio.Future[None]:
        """Decide, keep the new state in memory, queue it for commit; the future resolves after commit."""
        return self._decide(active, event, new_run=new_run)[1]

    def _decide(
        self, active: _Active, event: Event, *, new_run: bool = False
    ) -> tuple[Decision, asyncio.Future[None]]:
        now = self.clock()
        try:
            decision = decide(active.wf, active.state, event, now, random.random())
        except Exception as exc:  # a decider bug must end the run visibly, not strand it
            log.exception("deciding %s for run %s failed", event, active.state.info.id)
            decision = _broken(active.state, exc, now)
        decision.new_run = new_run
        state = active.state
        if decision.run is not None:
            state.info = decision.run
        if decision.steps:
            state.steps.update(decision.steps)
        self._queue.append(decision)
        assert self._wake is not None and self._batch is not None
        self._wake.set()
        return decision, self._batch

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
            await self._commit(batch)
            self.stats["commits"] += 1
            self.stats["decisions"] += len(batch)
            assert done is not None
            done.set_result(None)
            for decision in batch:
                self._act(decision)
            for listener in self._listeners:
                for decision in batch:
                    try:
                        listener(decision)
                    except Exception:
                        log.exception("decision listener %r failed", listener)
            if self._queue:
                self._wake.set()

    async def _commit(self, batch: list[Decision]) -> None:
        delay = 0.05
        while True:
            try:
                await self.store.commit(batch)
                return
            except Exception:
                # Effects wait for the commit, so nothing acts on state that is not durable yet.
                log.exception("commit of %d decisions failed; retrying in %.2fs", len(batch), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _act(self, decision: Decision) -> None:
        active = self._runs.get(decision.run_id)
        if active is None:
            return
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
                self._background_task(self._start_child(active, effect))
            elif isinstance(effect, Fetch):
                self._background_task(self._fetch(active, effect))
            elif isinstance(effect, Listening):
                self._background_task(self._deliver_kept(active, effect))
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

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        """Run an effect's I/O (start a child, look for a result or a kept event) beside the loop,
        held until done; a draining engine starts none (the next start re-issues them)."""
        if self._draining:
            work.close()
            return
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                outcome = await self.http.fetch(where["url"])
            else:
                outcome = await self.results.fetch(where["bucket"], where["key"])
        except Exception as exc:  # a reader's bug must fail the step, not strand it
            log.exception("fetching %s for %s failed", where, active.state.info.id)
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
        }
        return await self.http.execute(run_id, effect.step, action, effect.request, None, extra)

    def _still_waits_for(self, active: _Active, effect: StartChild) -> bool:
        """Is the parent's step still waiting for this child (not cancelled, timed out or moved on)?"""
        if self._runs.get(active.state.info.id) is not active:
            return False
        if effect.run_id in self._aborted_children:
            return False
        s = active.state.step(effect.step)
        return s.status == WAITING and s.reason == CHILD and s.attempt == effect.attempt

    async def _start_child(self, active: _Active, effect: StartChild) -> None:
        """Start the sub-workflow's run once; when it ends, the parent's step hears of it."""
        parent = active.state.info.id
        if not self._still_waits_for(active, effect):
            self._aborted_children.discard(effect.run_id)  # never started: nothing to remember
            return
        self._child_waiters[effect.run_id] = (parent, effect.step, effect.attempt)
        if effect.run_id in self._runs:
            return  # started already (a resume): its end will be reported
        error: dict[str, Any] | None = None
        try:
            existing = await self.store.get_run(effect.run_id)
            if existing is not None:
                if existing.info.done:
                    self._report_child(existing.info)
                return
            if not self._still_waits_for(active, effect):
                self._child_waiters.pop(effect.run_id, None)
                return
            await self.start_run(
                effect.workflow, effect.input, version=effect.version, run_id=effect.run_id
            )
            if not self._still_waits_for(active, effect) and effect.run_id in self._runs:
                reason = f"its parent run {parent} stopped"
                self._event(self._runs[effect.run_id], Cancel(reason))
        except InputError as exc:
            error = {"kind": "input", "message": f"sub-workflow {effect.workflow!r}: {exc}"}
        except (NotFound, DefinitionError) as exc:
            error = {"kind": "config", "message": f"sub-workflow {effect.workflow!r}: {exc}"}
        if error is not None:
            self._child_waiters.pop(effect.run_id, None)
            if self._runs.get(parent) is active:
                self._event(active, ChildDone(effect.step, effect.attempt, False, None, error))

    def _report_child(self, info: RunInfo) -> None:
        waiter = self._child_waiters.pop(info.id, None)
        if waiter is None:
            return
        parent_id, step, attempt = waiter
        parent = self._runs.get(parent_id)
        if parent is None or self._draining:
            return
        if info.status == SUCCEEDED:
            self._event(parent, ChildDone(step, attempt, True, info.output))
            return
        cause = (info.error or {}).get("message", info.status)
        error = {
            "kind": "child",
            "message": f"sub-workflow {info.workflow!r} run {info.id} {info.status}: {cause}",
            "run_id": info.id,
        }
        self._event(parent, ChildDone(step, attempt, False, None, error))

    def _abort_child(self, active: _Active, step: str) -> None:
        """A cancelled sub-workflow step cancels the run it started."""
        definition = active.wf.steps.get(step)
        state = active.state.steps.get(step)
        if definition is None or definition.kind != "workflow" or state is None:
            return
        child = (state.request or {}).get("run_id")
        if child:
            self._aborted_children.add(child)
        if child and self._child_waiters.pop(child, None) is not None and child in self._runs:
            reason = f"its parent run {active.state.info.id} stopped"
            self._event(self._runs[child], Cancel(reason))

    def _finished(self, active: _Active) -> None:
        self._runs.pop(active.state.info.id, None)
        self._aborted_children.discard(active.state.info.id)
        self._report_child(active.state.info)
        if active.deadline is not None:
            active.deadline.cancel()
        for handle in active.timers.values():
            handle.cancel()
        for t in active.tasks.values():
            t.cancel()
        for fut in active.waiters:
            if not fut.done():
                fut.set_result(None)

    async def _execute(self, active: _Active, effect: Execute) -> None:
        started = self.clock()
        try:
            if isinstance(effect.action, Emit):
                outcome = await self._emit(active, effect)
            elif isinstance(effect.action, HttpCall) and effect.action.callback:
                outcome = await self._call_async(active, effect, effect.action)
            elif isinstance(effect.action, HttpCall) and effect.action.poll is not None:
                # The service is told where to leave the result; the step's timeout bounds the
                # whole wait for it, not this request (which has the service's timeout).
                extra = None
                if effect.action.poll.bucket is not None:
                    run_id = active.state.info.id
                    extra = {
                        "Legato-Result-Bucket": effect.action.poll.bucket,
                        "Legato-Result-Key": result_key(run_id, effect.step, effect.attempt),
                    }
                outcome = await self.http.execute(
                    active.state.info.id, effect.step, effect.action, effect.request, None, extra
                )
            elif isinstance(effect.action, HttpCall):
                outcome = await self.http.execute(
                    active.state.info.id, effect.step, effect.action, effect.request, effect.timeout
                )
            elif effect.timeout:
                try:
                    async with asyncio.timeout(effect.timeout):
                        outcome = await self.python.execute(effect.request)
                except TimeoutError:
                    outcome = Outcome.failure(
                        "timeout", f"did not return within {effect.timeout:g}s"
                    )
            else:
                outcome = await self.python.execute(effect.request)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # an executor bug must not strand the run
            log.exception("executor failed on %s/%s", active.state.info.id, effect.step)
            outcome = Outcome.failure("exception", f"{type(exc).__name__}: {exc}")
        if active.tasks.get(effect.step) is asyncio.current_task():
            del active.tasks[effect.step]
        if self._closing or self._runs.get(active.state.info.id) is not active:
            return
        self._event(
            active,
            StepDone(
                effect.step,
                effect.attempt,
                outcome.ok,
                outcome.output,
                outcome.error,
                started,
                self.clock(),
            ),
        )
