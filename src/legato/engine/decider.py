"""The decider: (workflow, run state, event, now, rand) -> Decision. Pure: no I/O, no clock, no randomness
of its own, so every rule (readiness, joins, branches, retries, maps, timeouts, cancel, retry) is tested in
microseconds and replays the same way twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from legato.engine.airflow import TaskInstance, run_names
from legato.engine.ids import child_run_id, result_key
from legato.engine.render import render_request
from legato.engine.state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    WAITING,
    Abort,
    Attempt,
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
    RunState,
    Schedule,
    Start,
    StartChild,
    StepDone,
    StepState,
    Timeout,
    Wake,
)
from legato.expressions import TemplateError, evaluate_truth
from legato.masking import mask_request, mask_text, mask_url
from legato.model.durations import parse_time
from legato.model.fields import check_object
from legato.model.retries import FAST_RETRIES, MIN_DELAY
from legato.model.workflow import (
    Branch,
    Call,
    Emit,
    Fail,
    HttpCall,
    Listen,
    MapOver,
    Poll,
    PythonCall,
    RetryPolicy,
    Step,
    SubWorkflow,
    Wait,
    Workflow,
)
from legato.secret_refs import SECRETS, TAG_KEY, SecretRefs, new_tag

ServiceRetry = Callable[[str], RetryPolicy | None]  # a service's name -> its `retry` setting
READY, WAIT, SKIP = "ready", "wait", "skip"
UPSTREAM_FAILED = "upstream_failed"
UPSTREAM_SKIPPED = "upstream_skipped"
BRANCH_NOT_TAKEN = "branch_not_taken"
CALLBACK = "callback"  # the reason of a step waiting for its async call's callback
TIMER = "timer"  # the reason of a wait step's wait
EVENT = "event"  # the reason of a listen step's wait
CHILD = "child"  # the reason of a sub-workflow step's wait
POLL = "poll"  # the reason of a step waiting for its polled result
# A failed look at a polled result that may pass: keep looking until the step's timeout rather than
# fail the attempt (whose retry would submit the job a second time).
PASSING_FETCH_ERRORS = frozenset({"network", "timeout", "5xx", "429"})
# A map's bookkeeping looks at every child on each child's event, so its cost grows with the square of
# its size; past this many items, split the work (or use a sub-workflow per batch).
MAX_MAP_ITEMS = 2000


def decide(
    wf: Workflow,
    run: RunState,
    event: Event,
    now: float,
    rand: float = 0.5,
    service_retry: ServiceRetry | None = None,
) -> Decision:
    """Answer one event. `rand` in [0, 1) feeds retry jitter so the caller owns all randomness.
    `service_retry` looks up a service's own retry setting in the caller's directory (in memory: no
    I/O here); a step under the built-in default retries as its service says."""
    t = _Txn(wf, run, now, rand, service_retry)
    if isinstance(event, Start):
        t.start()
    elif isinstance(event, StepDone):
        t.step_done(event)
    elif isinstance(event, Callback):
        t.callback(event)
    elif isinstance(event, EventArrived):
        t.event_arrived(event)
    elif isinstance(event, ChildDone):
        t.child_done(event)
    elif isinstance(event, Fetched):
        t.fetched(event)
    elif isinstance(event, Wake):
        t.wake(event.step)
    elif isinstance(event, Cancel):
        t.stop(CANCELLED, {"kind": "cancelled", "message": event.reason}, event.reason)
    elif isinstance(event, Timeout):
        t.timeout()
    elif isinstance(event, Retry):
        t.retry()
    elif isinstance(event, Resume):
        t.resume()
    return t.decision()


def retry_delay(policy: RetryPolicy, tries: int, rand: float, retry_after: Any) -> float:
    """The backoff delay, or longer if the answer said `Retry-After`: never earlier than the service
    asked, but never longer than the policy's `max_delay` (a service answering `Retry-After: 10^9`
    must not park the step for ever). Over the Retry-After floor comes a spread of up to 10% of
    it (at least 1 s), so the runs one outage answered alike do not all come back at once. Past
    the FAST_RETRIES-th retry, never less than MIN_DELAY: no hot loop, whatever the levels merged."""
    delay = policy.delay_for(tries, rand)
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        floor = min(float(retry_after), policy.max_delay)
        spread = max(1.0, floor / 10) * rand if policy.jitter else 0.0
        delay = max(delay, floor + spread)
    if tries > FAST_RETRIES:
        delay = max(delay, MIN_DELAY)
    return delay


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _where(request: Any) -> str:
    poll = (request or {}).get("poll", {})
    if "url" in poll:
        return str(poll["url"])
    return f"s3://{poll.get('bucket')}/{poll.get('key')}"


def event_key(value: Any) -> str:
    """Keys compare as text, so `42` from a template and `"42"` from an event are the same key."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def child_name(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def split_child(name: str) -> tuple[str, int] | None:
    if not name.endswith("]"):
        return None
    base, _, idx = name[:-1].partition("[")
    return base, int(idx)


class _Txn:
    """An overlay on the run state: reads see this decision's own writes; the writes are the Decision."""

    def __init__(
        self,
        wf: Workflow,
        run: RunState,
        now: float,
        rand: float,
        service_retry: ServiceRetry | None = None,
    ) -> None:
        self.wf = wf
        self.run = run
        self.now = now
        self.rand = rand
        self.service_retry = service_retry
        self.info = run.info
        self.info_changed = False
        self.changed: dict[str, StepState] = {}
        self.attempts: list[Attempt] = []
        self.effects: list[Any] = []
        self._view: dict[str, Any] | None = None
        self._view_shared = False
        self._airflow: dict[str, Any] | None = None  # Airflow's run names, if the workflow asks
        # `propagate`'s work: the downstream steps left to look at, one iterator per ended step.
        self._frames: list[Iterator[str]] = []
        self._propagating = False

    # -- state access -------------------------------------------------------------------------

    def get(self, name: str) -> StepState:
        s = self.changed.get(name)
        if s is not None:
            return s
        return self.run.steps.get(name) or StepState(name)

    def set(self, s: StepState) -> None:
        self.changed[s.name] = s
        view = self._view
        if view is None or s.name not in self.wf.steps:
            return
        # Update the view rather than drop it: rebuilding it at each step of a chain that ends
        # in one decision (branches) was quadratic. Copied first if a render has seen it.
        if self._view_shared:
            view = self._view = {**view, "steps": dict(view["steps"])}
            self._view_shared = False
        view["steps"][s.name] = {
            "status": s.status,
            "output": s.output,
            "error": s.error,
            "request": s.request,
        }

    def set_info(self, **kw: Any) -> None:
        self.info = self.info._replace(**kw)
        self.info_changed = True

    def decision(self) -> Decision:
        return Decision(
            run_id=self.info.id,
            workflow=self.info.workflow,
            run=self.info if self.info_changed else None,
            steps=self.changed,
            attempts=self.attempts,
            effects=self.effects,
        )

    def context(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._view is None:
            names = set(self.run.steps) | set(self.changed)
            steps = {}
            for n in names:
                if n in self.wf.steps:
                    s = self.get(n)
                    steps[n] = {
                        "status": s.status,
                        "output": s.output,
                        "error": s.error,
                        "request": s.request,
                    }
            info = self.info
            self._view = {
                "input": info.input,
                "steps": steps,
                "run": {"id": info.id, "workflow": info.workflow, "version": info.version},
                "secrets": SECRETS,
            }
        self._view_shared = True
        if self.wf.airflow is not None:  # Airflow's names too (copy-on-write keeps `ti`'s steps)
            view = self._view
            if self._airflow is None:
                info = self.info
                params = self.wf.airflow.get("params") or {}
                self._airflow = run_names(params, view["run"], info.input, info.created_at)
            run = view["run"]
            ti = TaskInstance(view["steps"], self.wf.airflow["kinds"], run["workflow"], run["id"])
            return {**view, **self._airflow, "ti": ti, **(extra or {})}
        if extra:
            return {**self._view, **extra}
        return self._view

    # -- events -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.info.status != PENDING:
            return
        deadline = self.now + self.wf.timeout if self.wf.timeout else None
        self.set_info(status=RUNNING, started_at=self.now, deadline=deadline)
        for root in self.wf.roots:
            if self.get(root).status == PENDING:
                self.activate(root)
        self.check_finished()

    def step_done(self, ev: StepDone) -> None:
        s = self.get(ev.step)
        if self.info.status != RUNNING or s.status != RUNNING or s.attempt != ev.attempt:
            return  # late answer of an aborted or superseded attempt: history already closed it
        if ev.ok:
            step, action, _ = self.executable(ev.step)
            if isinstance(action, HttpCall) and action.callback:
                self.await_callback(s, step, action, ev.output)
                return
            if isinstance(action, HttpCall) and action.poll is not None:
                self.await_result(s, step, action.poll, ev.output)
                return
        # A job's submission that timed out, or failed on the network after it was sent, may have
        # reached the service, which may be working on it: retried like a job past its deadline
        # (only under a written `on` naming that kind).
        error = ev.error or {}
        unsure = (
            not ev.ok
            and (
                error.get("kind") == "timeout"
                or (error.get("kind") == "network" and error.get("sent") is True)
            )
            and self.is_job(self.executable(ev.step)[1])
        )
        self.end_attempt(s, ev.ok, ev.output, ev.error, ev.finished_at, unsure)

    def end_attempt(
        self,
        s: StepState,
        ok: bool,
        output: Any,
        error: dict[str, Any] | None,
        finished: float,
        deadline: bool = False,
    ) -> None:
        if error is not None and _is_number(error.get("retry_after")):
            # Stored as the wait it can cause (at most `max_delay`), not a service's 1e23.
            policy = self.retry_policy(self.wf.steps[s.name.partition("[")[0]])
            error = {**error, "retry_after": min(float(error["retry_after"]), policy.max_delay)}
        self.record(s, SUCCEEDED if ok else FAILED, output, error, finished)
        if ok:
            self.set(
                s._replace(
                    status=SUCCEEDED, output=output, error=None, reason=None, finished_at=finished
                )
            )
            self.after_terminal(s.name)
        else:
            self.after_failure(
                s._replace(output=output, reason=None), error or {"kind": "exception"}, deadline
            )
        self.check_finished()

    def await_callback(self, s: StepState, step: Step, action: HttpCall, accepted: Any) -> None:
        """The service took the job: wait for its callback until the deadline (if any)."""
        at = self.callback_deadline(s, step, action)
        self.set(s._replace(status=WAITING, reason=CALLBACK, output=accepted, next_at=at))
        if at is not None:
            self.effects.append(Schedule(s.name, at))

    def await_result(self, s: StepState, step: Step, poll: Poll, accepted: Any) -> None:
        """The job was accepted: look for its result every `poll.every` seconds."""
        if poll.bucket is not None:
            location = {"bucket": poll.bucket, "key": result_key(self.info.id, s.name, s.attempt)}
        else:
            assert poll.url is not None
            try:
                url = self.poll_url(poll, accepted)[0]
            except TemplateError as exc:
                error = {"kind": exc.kind, "message": mask_text(f"poll.url {exc}")}
                self.end_attempt(s, False, accepted, error, self.now)
                return
            # Stored without credentials; each look renders it again to send it (`poll_location`).
            location = {"url": mask_url(url)}
        at = self.now + poll.every
        request = {**(s.request or {}), "poll": location}
        self.set(
            s._replace(status=WAITING, reason=POLL, output=accepted, request=request, next_at=at)
        )
        self.effects.append(Schedule(s.name, at))

    def poll_url(self, poll: Poll, accepted: Any) -> tuple[str, str]:
        """The poll URL and the tag of its secrets' markers (see secret_refs)."""
        assert poll.url is not None
        tag = new_tag()
        url = poll.url.render(self.context({"accepted": accepted, "secrets": SecretRefs(tag)}))
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise TemplateError(f"must render to an absolute http(s) URL, got {url!r}")
        return url, tag

    def poll_location(self, s: StepState) -> dict[str, str]:
        """Where to look for a polled result: the URL rendered again as it was first (the stored
        copy is masked), with its own tag; the stored copy if the render now differs."""
        stored: dict[str, str] = (s.request or {}).get("poll", {})
        step = self.wf.steps.get(s.name.partition("[")[0])
        action = step.action if step is not None else None
        if isinstance(action, MapOver):
            action = action.action
        if "url" not in stored or not isinstance(action, HttpCall) or action.poll is None:
            return stored
        try:
            url, tag = self.poll_url(action.poll, s.output)
        except TemplateError:
            return stored
        if mask_url(url) != stored["url"]:
            return stored
        return {"url": url, TAG_KEY: tag} if tag in url else {"url": url}

    def fetched(self, ev: Fetched) -> None:
        s = self.get(ev.step)
        if (
            self.info.status != RUNNING
            or s.status != WAITING
            or s.reason != POLL
            or s.attempt != ev.attempt
        ):
            return
        passing = ev.error is not None and ev.error.get("kind") in PASSING_FETCH_ERRORS
        if ev.found or (ev.error is not None and not passing):
            done = s._replace(reason=None, next_at=None)
            self.end_attempt(done, ev.error is None, ev.output, ev.error, self.now)
            return
        # Not there yet, or a read that failed for a while (the job itself goes on): look again.
        step, action, _ = self.executable(ev.step)
        assert isinstance(action, HttpCall) and action.poll is not None
        if step.timeout and s.started_at is not None and self.now >= s.started_at + step.timeout:
            error = {
                "kind": "timeout",
                "message": f"no result at {_where(s.request)} within the step's timeout of {step.timeout:g}s",
            }
            self.end_attempt(
                s._replace(reason=None, next_at=None), False, s.output, error, self.now, True
            )
            return
        at = self.now + action.poll.every
        self.set(s._replace(next_at=at))
        self.effects.append(Schedule(s.name, at))

    def is_async_call(self, name: str) -> bool:
        if self.is_map(name) or (split_child(name) is None and name not in self.wf.steps):
            return False
        _, action, _ = self.executable(name)
        return isinstance(action, HttpCall) and action.callback

    def callback_deadline(self, s: StepState, step: Step, action: HttpCall) -> float | None:
        """The earlier of the attempt's timeout and the next heartbeat due."""
        due = []
        if step.timeout and s.started_at is not None:
            due.append(s.started_at + step.timeout)
        if action.heartbeat:
            due.append(self.now + action.heartbeat)
        return min(due) if due else None

    def callback(self, ev: Callback) -> None:
        """A callback for the current attempt of a step waiting for one; anything else changes nothing
        (the runtime answers that as a conflict)."""
        s = self.get(ev.step)
        if self.info.status != RUNNING or s.attempt != ev.attempt:
            return
        waiting = s.status == WAITING and s.reason == CALLBACK
        # A fast service may report before its 2xx to the call itself is in: that counts too.
        early = s.status == RUNNING and not ev.heartbeat and self.is_async_call(ev.step)
        if not (waiting or early):
            return
        if ev.heartbeat:
            step, action, _ = self.executable(ev.step)
            assert isinstance(action, HttpCall)
            at = self.callback_deadline(s, step, action)
            self.set(s._replace(next_at=at))
            if at is not None:
                self.effects.append(Schedule(s.name, at))
            return
        ok = ev.error is None
        error = None if ok else {"kind": "callback", **(ev.error or {})}
        self.end_attempt(s._replace(next_at=None), ok, ev.output, error, self.now)

    def due(self, name: str, s: StepState) -> None:
        """A waiting step's due time has come: what that means depends on what it waits for."""
        step = self.wf.steps.get(name)
        if s.reason == POLL:
            self.effects.append(Fetch(name, s.attempt, self.poll_location(s)))
        elif s.reason == TIMER:
            self.close_wait(s, SUCCEEDED, {"until": s.next_at}, None)
        elif s.reason == EVENT:
            assert step is not None
            req = s.request or {}
            error = {
                "kind": "timeout",
                "message": f"no {req.get('event')!r} event for key {req.get('key')!r} "
                f"within the step's timeout of {step.timeout or 0:g}s",
            }
            # No retry: listening again would wait for the same event a second time.
            self.close_wait(s, FAILED, None, error)
        elif s.reason == CHILD:
            assert step is not None
            error = {
                "kind": "timeout",
                "message": "the sub-workflow did not end within the step's timeout of "
                f"{step.timeout or 0:g}s",
            }
            self.effects.append(Abort(name))  # the runtime cancels the child run
            self.end_attempt(s._replace(reason=None, next_at=None), False, None, error, self.now)
        else:  # CALLBACK
            parent, action, _ = self.executable(name)
            beat = isinstance(action, HttpCall) and action.heartbeat
            late = (
                parent.timeout is not None
                and s.started_at is not None
                and self.now >= s.started_at + parent.timeout
            )
            what = (
                f"no callback within the step's timeout of {parent.timeout:g}s"
                if late or not beat
                else f"no heartbeat within {beat:g}s"
            )
            error = {"kind": "timeout", "message": what}
            self.end_attempt(s, False, s.output, error, self.now, late or not beat)

    def close_wait(
        self, s: StepState, status: str, output: Any, error: dict[str, Any] | None
    ) -> None:
        """End a wait for good, without the retry policy (a timer, or a listen that timed out)."""
        self.record(s, status, output, error, self.now)
        self.set(
            s._replace(
                status=status,
                output=output,
                error=error,
                reason=None,
                next_at=None,
                finished_at=self.now,
            )
        )
        self.after_terminal(s.name)
        self.check_finished()

    def wake(self, name: str) -> None:
        s = self.get(name)
        if self.info.status != RUNNING or s.status != WAITING:
            return
        if s.reason in (CHILD, POLL, EVENT, TIMER, CALLBACK):
            if s.next_at is None:
                return
            if self.now < s.next_at:
                # A timer that fired early (the loop's clock is not the wall clock) or one a
                # heartbeat replaced: keep one timer armed for the due time as it is now.
                self.effects.append(Schedule(name, s.next_at))
                return
            self.due(name, s)
            return
        top = self.wf.steps.get(name)
        if top is not None and not isinstance(top.action, HttpCall | PythonCall | Emit):
            self.activate(name)  # a retry of a step no executor runs (a sub-workflow): start again
            self.check_finished()
            return
        step, action, extra = self.executable(name)
        self.dispatch(name, step, action, extra)
        self.check_finished()

    def timeout(self) -> None:
        limit = self.wf.timeout or 0
        self.stop(
            FAILED,
            {"kind": "timeout", "message": f"the run exceeded its timeout of {limit:g}s"},
            "run timed out",
        )

    def stop(self, status: str, error: dict[str, Any], reason: str) -> None:
        if self.info.status not in (PENDING, RUNNING, WAITING):
            return
        names = list(self.wf.steps) + [n for n in self.run.steps if n not in self.wf.steps]
        for n in names:
            s = self.get(n)
            if s.done:
                continue
            if s.status in (RUNNING, WAITING) and not self.is_map(n):
                self.effects.append(Abort(n))
                if s.status == RUNNING or s.reason == CALLBACK:
                    self.record(
                        s, CANCELLED, None, {"kind": "cancelled", "message": reason}, self.now
                    )
            self.set(
                s._replace(status=CANCELLED, reason=reason, finished_at=self.now, next_at=None)
            )
        self.finish(status, None, error)

    def retry(self) -> None:
        if self.info.status not in (FAILED, CANCELLED):
            return
        for n, s in self.run.steps.items():
            if s.status != SUCCEEDED:
                self.set(StepState(n, PENDING, attempt=s.attempt))
        deadline = self.now + self.wf.timeout if self.wf.timeout else None
        self.set_info(status=RUNNING, finished_at=None, output=None, error=None, deadline=deadline)
        for n in self.wf.steps:
            if self.get(n).status != PENDING:
                continue
            verdict, reason = self.evaluate(n)
            if verdict == READY:
                self.activate(n)
            elif verdict == SKIP:
                self.skip(n, reason)
        self.check_finished()

    def resume(self) -> None:
        if self.info.status != RUNNING:
            return
        for n, s in self.run.steps.items():
            if s.status == RUNNING and not self.is_map(n):
                step, action, extra = self.executable(n)
                request = s.request or {}
                try:  # the stored copy is masked: render again what was sent, if it is the same
                    again = render_request(action, self.context(extra))
                    if again != request and mask_request(again) == request:
                        request = again
                except TemplateError:
                    pass
                self.effects.append(Execute(n, s.attempt, action, request, step.timeout))
            elif s.status == WAITING and s.next_at is not None:
                self.effects.append(Schedule(n, s.next_at))
            if s.status == WAITING and s.reason == EVENT and s.request:
                self.effects.append(Listening(n, s.attempt, s.request["event"], s.request["key"]))
            if s.status == WAITING and s.reason == CHILD and s.request:
                r = s.request
                self.effects.append(
                    StartChild(n, s.attempt, r["run_id"], r["workflow"], r["version"], r["input"])
                )
        for n, s in self.run.steps.items():
            if s.status == RUNNING and self.is_map(n):
                self.fill(n)

    # -- rules --------------------------------------------------------------------------------

    def is_map(self, name: str) -> bool:
        step = self.wf.steps.get(name)
        return step is not None and isinstance(step.action, MapOver)

    def executable(self, name: str) -> tuple[Step, Call, dict[str, Any] | None]:
        child = split_child(name)
        if child is None:
            step = self.wf.steps[name]
            assert isinstance(step.action, HttpCall | PythonCall | Emit)
            return step, step.action, None
        parent, index = child
        step = self.wf.steps[parent]
        assert isinstance(step.action, MapOver)
        items = self.get(parent).request["items"]
        return step, step.action.action, {"item": items[index], "index": index}

    def record(self, s: StepState, status: str, output: Any, error: Any, finished: float) -> None:
        """History of an attempt that did not succeed; a succeeded attempt is its step's own row."""
        if status == SUCCEEDED:
            return
        self.attempts.append(
            Attempt(
                self.info.id,
                s.name,
                s.attempt,
                status,
                s.started_at,
                finished,
                s.request,
                output,
                error,
            )
        )

    def new_attempt(
        self,
        name: str,
        status: str,
        *,
        request: Any = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> StepState:
        """The step's next attempt, begun now; a terminal status also ends it now."""
        prev = self.get(name)
        return prev._replace(
            status=status,
            attempt=prev.attempt + 1,
            tries=prev.tries + 1,
            started_at=self.now,
            finished_at=self.now if status in TERMINAL else None,
            next_at=None,
            request=request,
            output=output,
            error=error,
            reason=None,
        )

    def activate(self, name: str) -> None:
        """Start a step whose dependencies allow it."""
        step = self.wf.steps[name]
        action = step.action
        if isinstance(action, HttpCall | PythonCall | Emit):
            self.dispatch(name, step, action, None)
        elif isinstance(action, Branch):
            self.run_branch(name, action)
        elif isinstance(action, Fail):
            self.run_fail(name, action)
        elif isinstance(action, Wait):
            self.run_wait(name, action)
        elif isinstance(action, Listen):
            self.run_listen(self.wf.steps[name], action)
        elif isinstance(action, SubWorkflow):
            self.run_child(name, action)
        else:
            self.run_map(name, action)

    def run_child(self, name: str, sub: SubWorkflow) -> None:
        try:
            data = sub.input.render(self.context()) if sub.input is not None else {}
            if not isinstance(data, dict):
                raise TemplateError(f"must render to an object, got {type(data).__name__}")
        except TemplateError as exc:
            self.inline_result(name, False, None, {"kind": exc.kind, "message": f"input {exc}"})
            return
        s = self.new_attempt(name, WAITING)
        child = child_run_id(self.info.id, name, s.attempt, self.now)
        request = {"workflow": sub.name, "version": sub.version, "input": data, "run_id": child}
        timeout = self.wf.steps[name].timeout
        due = self.now + timeout if timeout else None
        self.set(s._replace(reason=CHILD, request=request, next_at=due))
        self.effects.append(StartChild(name, s.attempt, child, sub.name, sub.version, data))
        if due is not None:
            self.effects.append(Schedule(name, due))

    def child_done(self, ev: ChildDone) -> None:
        s = self.get(ev.step)
        if (
            self.info.status != RUNNING
            or s.status != WAITING
            or s.reason != CHILD
            or s.attempt != ev.attempt
        ):
            return
        self.end_attempt(s._replace(reason=None), ev.ok, ev.output, ev.error, self.now)

    def run_listen(self, step: Step, listen: Listen) -> None:
        """Wait for the event; the step's timeout, if any, bounds the wait."""
        name = step.name
        try:
            key = event_key(listen.key.render(self.context()) if listen.key else None)
        except TemplateError as exc:
            self.inline_result(name, False, None, {"kind": exc.kind, "message": f"key {exc}"})
            return
        due = self.now + step.timeout if step.timeout else None
        s = self.new_attempt(name, WAITING, request={"event": listen.event, "key": key})
        self.set(s._replace(reason=EVENT, next_at=due))
        self.effects.append(Listening(name, s.attempt, listen.event, key))
        if due is not None:
            self.effects.append(Schedule(name, due))

    def event_arrived(self, ev: EventArrived) -> None:
        s = self.get(ev.step)
        if (
            self.info.status != RUNNING
            or s.status != WAITING
            or s.reason != EVENT
            or s.attempt != ev.attempt
        ):
            return
        self.end_attempt(s._replace(reason=None, next_at=None), True, ev.data, None, self.now)

    def run_wait(self, name: str, wait: Wait) -> None:
        """A durable timer: the due time is stored, and a restart re-arms it as it was."""
        if wait.until is None:
            due = self.now + (wait.duration or 0.0)
        else:
            try:
                due = parse_time(wait.until.render(self.context()))
            except (TemplateError, ValueError) as exc:
                kind = exc.kind if isinstance(exc, TemplateError) else "template"
                self.inline_result(name, False, None, {"kind": kind, "message": f"until {exc}"})
                return
        if due <= self.now:
            self.inline_result(name, True, {"until": due}, None)
            return
        s = self.new_attempt(name, WAITING)
        self.set(s._replace(reason=TIMER, next_at=due, request={"until": due}))
        self.effects.append(Schedule(name, due))

    def dispatch(self, name: str, step: Step, action: Call, extra: dict[str, Any] | None) -> None:
        s = self.new_attempt(name, RUNNING)
        try:
            request = render_request(action, self.context(extra))
        except TemplateError as exc:  # it may quote a rendered URL: never with its credentials
            error = {"kind": exc.kind, "message": mask_text(str(exc))}
            self.record(s, FAILED, None, error, self.now)
            self.after_failure(s, error)
            return
        # Stored and shown without credentials; the executor gets what it sends (see masking).
        s = s._replace(request=mask_request(request))
        self.set(s)
        self.effects.append(Execute(name, s.attempt, action, request, step.timeout))

    def inline_result(self, name: str, ok: bool, output: Any, error: dict[str, Any] | None) -> None:
        """Branch and fail steps decide at once, without an executor."""
        s = self.new_attempt(name, SUCCEEDED if ok else FAILED, output=output, error=error)
        self.set(s)
        self.record(s, s.status, output, error, self.now)
        self.after_terminal(name)

    def run_branch(self, name: str, branch: Branch) -> None:
        ctx = self.context()
        try:
            chosen = next(
                (then for when, then in branch.cases if evaluate_truth(when, ctx)), branch.otherwise
            )
        except TemplateError as exc:
            self.inline_result(name, False, None, {"kind": exc.kind, "message": str(exc)})
            return
        self.inline_result(name, True, {"next": list(chosen)}, None)

    def run_fail(self, name: str, fail: Fail) -> None:
        try:
            message = fail.message.render(self.context())
        except TemplateError as exc:
            message = f"(message failed to render: {exc})"
        self.inline_result(name, False, None, {"kind": "fail", "message": str(message)})

    def run_map(self, name: str, spec: MapOver) -> None:
        try:
            items = spec.over.render(self.context())
            if not isinstance(items, list):
                raise TemplateError(f"map.over must render to a list, got {type(items).__name__}")
            if len(items) > MAX_MAP_ITEMS:
                raise TemplateError(
                    f"map.over rendered {len(items)} items; a map takes at most {MAX_MAP_ITEMS}"
                )
        except TemplateError as exc:
            self.inline_result(name, False, None, {"kind": exc.kind, "message": str(exc)})
            return
        self.set(self.new_attempt(name, RUNNING, request={"items": items}))
        for i in range(len(items)):
            c = self.get(child_name(name, i))
            if c.status != SUCCEEDED:
                self.set(StepState(c.name, PENDING, attempt=c.attempt))
        self.fill(name)

    def fill(self, parent: str) -> None:
        """Keep a map's children running up to its concurrency; close the map when they are done."""
        spec = self.wf.steps[parent].action
        assert isinstance(spec, MapOver)
        p = self.get(parent)
        if p.status != RUNNING:
            return
        count = len(p.request["items"])
        children = [self.get(child_name(parent, i)) for i in range(count)]
        failed = next((c for c in children if c.status in (FAILED, CANCELLED)), None)
        if failed is not None:
            for c in children:
                if not c.done:
                    if c.status in (RUNNING, WAITING):
                        self.effects.append(Abort(c.name))
                    if c.status == RUNNING:
                        cancelled = {"kind": "cancelled", "message": "another item failed"}
                        self.record(c, CANCELLED, None, cancelled, self.now)
                    self.set(
                        c._replace(
                            status=CANCELLED,
                            reason="another item failed",
                            finished_at=self.now,
                            next_at=None,
                        )
                    )
            err = dict(failed.error or {})
            err["message"] = f"item {failed.name} failed: {err.get('message', failed.status)}"
            self.record(p, FAILED, None, err, self.now)
            self.set(p._replace(status=FAILED, error=err, finished_at=self.now))
            self.after_terminal(parent)
            return
        busy = sum(1 for c in children if c.status in (RUNNING, WAITING))
        step = self.wf.steps[parent]
        for i, c in enumerate(children):
            if busy >= spec.concurrency:
                break
            if c.status == PENDING:
                self.dispatch(
                    c.name, step, spec.action, {"item": p.request["items"][i], "index": i}
                )
                if self.get(parent).status != RUNNING:
                    return
                busy += 1
        children = [self.get(child_name(parent, i)) for i in range(count)]
        if all(c.status == SUCCEEDED for c in children):
            self.set(
                self.get(parent)._replace(
                    status=SUCCEEDED, output=[c.output for c in children], finished_at=self.now
                )
            )
            self.after_terminal(parent)

    def after_failure(self, s: StepState, error: dict[str, Any], deadline: bool = False) -> None:
        """`deadline`: a job (an `async` or polled call) whose submission timed out or failed on
        the network once sent (`sent`), or that missed the step's timeout: the service may have it
        and still be working on it. Such a failure is retried only under a policy whose `on`
        someone wrote with its kind (`timeout`, `network`) in it (at any level), as a new job: its
        own callback token, result key and Idempotency-Key (see runtime)."""
        child = split_child(s.name)
        step = self.wf.steps[child[0] if child else s.name]
        policy = self.retry_policy(step)
        explicit = "on" in policy.given and str(error.get("kind")) in policy.on
        if (explicit or not deadline) and policy.should_retry(str(error.get("kind")), s.tries):
            at = self.now + retry_delay(policy, s.tries, self.rand, error.get("retry_after"))
            self.set(s._replace(status=WAITING, next_at=at, error=error, finished_at=self.now))
            self.effects.append(Schedule(s.name, at))
            return
        self.set(s._replace(status=FAILED, error=error, finished_at=self.now))
        self.after_terminal(s.name)

    @staticmethod
    def is_job(action: object) -> bool:
        return isinstance(action, HttpCall) and (action.callback or action.poll is not None)

    def retry_policy(self, step: Step) -> RetryPolicy:
        """Field by field: the step's `retry`, then its workflow's `defaults`, then its service's
        `retry`, then the built-in default (a service's `retries: 0` survives a `retry_delay`)."""
        policy = step.retry
        if self.service_retry is not None:
            action = step.action.action if isinstance(step.action, MapOver) else step.action
            if isinstance(action, HttpCall) and action.service is not None:
                service = self.service_retry(action.service)
                if service is not None:
                    return policy.over(service)
        return policy

    def after_terminal(self, name: str) -> None:
        child = split_child(name)
        if child is not None:
            self.fill(child[0])
        else:
            self.propagate(name)

    def propagate(self, name: str) -> None:
        """Start or skip the steps that `name`'s end unblocks. A loop over a stack, not recursion:
        a step that ends at once (a `wait: 0s`, a branch, a skip) unblocks the next in the same
        decision, and a chain of 2,000 of them would overflow Python's stack. A nested call only
        pushes its frame; the loop takes it next, so the order (depth first) is the recursion's."""
        self._frames.append(iter(self.wf.downstream[name]))
        if self._propagating:
            return
        self._propagating = True
        try:
            while self._frames:
                d = next(self._frames[-1], None)
                if d is None:
                    self._frames.pop()
                    continue
                if self.get(d).status != PENDING:
                    continue
                verdict, reason = self.evaluate(d)
                if verdict == READY:
                    self.activate(d)
                elif verdict == SKIP:
                    self.skip(d, reason)
        finally:
            self._propagating = False
            self._frames.clear()

    def skip(self, name: str, reason: str) -> None:
        s = self.get(name)
        self.set(s._replace(status=SKIPPED, reason=reason, finished_at=self.now))
        self.propagate(name)

    def evaluate(self, name: str) -> tuple[str, str]:
        """Apply the step's trigger rule to its dependencies' statuses."""
        step = self.wf.steps[name]
        if not step.depends_on:
            return READY, ""
        statuses: list[str] = []
        for dep in step.depends_on:
            ds = self.get(dep)
            branch = self.wf.steps[dep].action
            if (
                isinstance(branch, Branch)
                and name in branch.targets
                and ds.status == SUCCEEDED
                and name not in ds.output["next"]
            ):
                return SKIP, BRANCH_NOT_TAKEN  # an untaken target never runs, whatever its trigger
            statuses.append(ds.status)
        failed = any(st in (FAILED, CANCELLED) for st in statuses)
        done = all(st in TERMINAL for st in statuses)
        succeeded = [st == SUCCEEDED for st in statuses]
        skip_reason = UPSTREAM_FAILED if failed else UPSTREAM_SKIPPED
        rule = step.trigger
        if rule == "all_succeeded":
            if failed or SKIPPED in statuses:
                return SKIP, skip_reason
            return (READY, "") if all(succeeded) else (WAIT, "")
        if rule == "all_done":
            return (READY, "") if done else (WAIT, "")
        if rule == "one_succeeded":
            if any(succeeded):
                return READY, ""
            return (SKIP, skip_reason) if done else (WAIT, "")
        # none_failed: every dependency done, none failed, at least one succeeded.
        if failed:
            return SKIP, skip_reason
        if not done:
            return WAIT, ""
        return (READY, "") if any(succeeded) else (SKIP, skip_reason)

    def check_finished(self) -> None:
        if self.info.status != RUNNING:
            return
        # Last steps first: in a chain they are the ones still pending, so a run that is not
        # finished is told in one look rather than one per step (a 2,000-step chain was quadratic).
        if any(not self.get(n).done for n in reversed(list(self.wf.steps))):
            return
        states = [self.get(n) for n in self.wf.steps]
        failed = next(
            (s for s in states if s.status == FAILED and not self.wf.steps[s.name].optional), None
        )
        if failed is not None:
            message = (failed.error or {}).get("message", "failed")
            self.finish(
                FAILED,
                None,
                {
                    "kind": "step_failed",
                    "step": failed.name,
                    "message": f"step {failed.name!r} failed: {message}",
                },
            )
            return
        try:
            output = self.run_output()
        except TemplateError as exc:
            self.finish(FAILED, None, {"kind": "output", "message": f"output: {exc}"})
            return
        if self.wf.outputs:
            _, problems = check_object(self.wf.outputs, output, "output", strict=False)
            if problems:
                self.finish(
                    FAILED,
                    output,
                    {"kind": "output", "message": "; ".join(str(p) for p in problems)},
                )
                return
        self.finish(SUCCEEDED, output, None)

    def run_output(self) -> Any:
        if self.wf.output is not None:
            return self.wf.output.render(self.context())
        leaves = [n for n, down in self.wf.downstream.items() if not down]
        return {n: self.get(n).output for n in leaves if self.get(n).status == SUCCEEDED}

    def finish(self, status: str, output: Any, error: dict[str, Any] | None) -> None:
        self.set_info(status=status, finished_at=self.now, output=output, error=error)
        self.effects.append(Finished(status))
