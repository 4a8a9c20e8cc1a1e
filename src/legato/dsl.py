"""The Python DSL: a decorator turns a function into a workflow; steps are wired with `>>`.

    @workflow(inputs={"order_id": "string"}, defaults={"retries": 2, "retry_delay": "1s"})
    def take_order():
        reserve = http("reserve", service="stock", path="/reserve", json={"id": "{{ input.order_id }}"})

        @task(args={"charged": "{{ steps.charge.output.body.charged }}"})
        def receipt(charged: float) -> dict[str, str]:
            return {"text": f"paid {charged}"}

        reserve >> http("charge", service="billing", path="/charge") >> receipt

The body runs once, at decoration, to collect steps; the result is the same validated Workflow a YAML
document gives, so both forms store, version and run alike.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, overload

from legato.errors import LegatoError
from legato.model.build import build_workflow
from legato.model.workflow import Workflow

_builder: contextvars.ContextVar[_Builder | None] = contextvars.ContextVar(
    "legato_dsl", default=None
)


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[str, StepNode] = {}
        self.functions: dict[str, Callable[..., Any]] = {}

    def add(self, node: StepNode) -> None:
        if node.name in self.nodes:
            raise LegatoError(f"two steps are named {node.name!r}")
        self.nodes[node.name] = node


class StepNode:
    """A step being declared; `a >> b` makes b depend on a, `a >> [b, c]` fans out, `[a, b] >> c` joins."""

    def __init__(self, name: str, body: dict[str, Any]) -> None:
        self.name = name
        self.body = body
        self.depends_on: list[str] = []
        builder = _builder.get()
        if builder is None:
            raise LegatoError(f"step {name!r} must be declared inside a @workflow function")
        builder.add(self)

    def after(self, *upstream: StepNode | str) -> StepNode:
        for up in upstream:
            name = up.name if isinstance(up, StepNode) else up
            if name not in self.depends_on:
                self.depends_on.append(name)
        return self

    def __rshift__(self, other: StepNode | Sequence[StepNode]) -> Any:
        targets = [other] if isinstance(other, StepNode) else list(other)
        for t in targets:
            t.after(self)
        return other

    def __rrshift__(self, other: Sequence[StepNode]) -> StepNode:
        return self.after(*other)

    def __repr__(self) -> str:
        return f"<step {self.name}>"


def _seconds(value: Any) -> Any:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _common(options: dict[str, Any]) -> dict[str, Any]:
    """Step options shared by every kind, in the plain form's spelling."""
    out: dict[str, Any] = {}
    retries = options.pop("retries", None)
    retry_delay = options.pop("retry_delay", None)
    retry = dict(options.pop("retry", None) or {})
    if retries is not None:
        retry["retries"] = retries
    if retry_delay is not None:
        retry["delay"] = retry_delay
    if retry:
        out["retry"] = {k: _seconds(v) for k, v in retry.items()}
    for key in ("timeout", "trigger", "optional", "description"):
        if options.get(key) is not None:
            out[key] = _seconds(options.pop(key))
        else:
            options.pop(key, None)
    if options:
        raise LegatoError(f"unknown step option {sorted(options)[0]!r}")
    return out


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def http(
    name: str,
    *,
    service: str | None = None,
    url: str | None = None,
    method: str | None = None,
    path: str | None = None,
    query: Any = None,
    headers: Any = None,
    json: Any = None,
    body: Any = None,
    success: Sequence[int | str] | None = None,
    follow_redirects: bool | None = None,
    poll: dict[str, Any] | None = None,
    **options: Any,
) -> StepNode:
    """An HTTP call to a directory service (or an absolute `url`). `follow_redirects`: None
    follows them as the service says (a step by URL does not)."""
    call = _clean(
        {
            "service": service,
            "url": url,
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "json": json,
            "body": body,
            "success": list(success) if success is not None else None,
            "follow_redirects": follow_redirects,
            "poll": {k: _seconds(v) for k, v in poll.items()} if poll else None,
        }
    )
    return StepNode(name, {"http": call, **_common(options)})


def _function_path(fn: Callable[..., Any]) -> str:
    path = f"{fn.__module__}:{fn.__qualname__}"
    builder = _builder.get()
    if builder is not None:
        builder.functions[path] = fn
    return path


@overload
def task(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    args: dict[str, Any] | None = None,
    **options: Any,
) -> StepNode: ...


@overload
def task(
    fn: None = None, *, name: str | None = None, args: dict[str, Any] | None = None, **options: Any
) -> Callable[[Callable[..., Any]], StepNode]: ...


def task(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    args: dict[str, Any] | None = None,
    **options: Any,
) -> StepNode | Callable[[Callable[..., Any]], StepNode]:
    """A Python function as a step (sync functions run in a thread, async ones on the loop).

    `args` are templates rendered into keyword arguments; the return value is the step's output.
    """

    def make(f: Callable[..., Any]) -> StepNode:
        call = _clean({"function": _function_path(f), "args": args})
        return StepNode(name or f.__name__, {"python": call, **_common(dict(options))})

    return make(fn) if fn is not None else make


def branch(
    name: str,
    cases: Iterable[tuple[str, Sequence[StepNode | str] | StepNode | str]] = (),
    otherwise: Sequence[StepNode | str] | StepNode | str = (),
    **options: Any,
) -> StepNode:
    """Run the steps of the first case whose condition holds; the other targets are skipped."""
    rendered = [{"when": when, "then": _names(then)} for when, then in cases]
    body: dict[str, Any] = {"cases": rendered}
    if otherwise:
        body["otherwise"] = _names(otherwise)
    return StepNode(name, {"branch": body, **_common(options)})


def fail(name: str, message: str = "failed", **options: Any) -> StepNode:
    """End the run as failed with a (templated) message, typically on a branch."""
    return StepNode(name, {"fail": {"message": message}, **_common(options)})


def map_over(
    name: str,
    over: Any,
    *,
    http: dict[str, Any] | None = None,
    function: Callable[..., Any] | None = None,
    args: dict[str, Any] | None = None,
    concurrency: int = 10,
    **options: Any,
) -> StepNode:
    """Run one HTTP call or function per item of a list (`item` and `index` in its templates)."""
    if (http is None) == (function is None):
        raise LegatoError(f"map_over {name!r} needs exactly one of http= or function=")
    inner: dict[str, Any] = (
        {"http": http}
        if http is not None
        else {"python": _clean({"function": _function_path(function), "args": args})}
        if function
        else {}
    )
    body = {"over": over, "concurrency": concurrency, "step": inner}
    return StepNode(name, {"map": body, **_common(options)})


def _names(targets: Sequence[StepNode | str] | StepNode | str) -> list[str]:
    if isinstance(targets, StepNode | str):
        targets = [targets]
    return [t.name if isinstance(t, StepNode) else t for t in targets]


_UNSET: Any = object()


def _moment(value: Any) -> Any:
    """A datetime as ISO 8601 (naive ones are UTC), so the definition stays plain data."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@overload
def workflow(
    fn: Callable[[], Any],
    *,
    name: str | None = None,
    description: str | None = None,
    inputs: Any = None,
    outputs: Any = None,
    output: Any = None,
    defaults: dict[str, Any] | None = None,
    timeout: float | str | timedelta | None = None,
    schedule: str | float | timedelta | None = None,
    start_date: str | float | datetime | None = None,
    end_date: str | float | datetime | None = None,
    catchup: bool | None = None,
    max_active_runs: int | None = None,
    tags: list[str] | None = None,
    default_args: dict[str, Any] | None = None,
    email: list[str] | str | None = None,
    email_on_failure: bool | None = None,
    email_on_retry: bool | None = None,
    email_on_success: bool | None = None,
    webhooks: list[dict[str, Any]] | None = None,
    schedule_interval: Any = _UNSET,
    airflow: dict[str, Any] | None = None,
    triggers: list[dict[str, Any]] | None = None,
) -> Workflow: ...


@overload
def workflow(
    fn: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    inputs: Any = None,
    outputs: Any = None,
    output: Any = None,
    defaults: dict[str, Any] | None = None,
    timeout: float | str | timedelta | None = None,
    schedule: str | float | timedelta | None = None,
    start_date: str | float | datetime | None = None,
    end_date: str | float | datetime | None = None,
    catchup: bool | None = None,
    max_active_runs: int | None = None,
    tags: list[str] | None = None,
    default_args: dict[str, Any] | None = None,
    email: list[str] | str | None = None,
    email_on_failure: bool | None = None,
    email_on_retry: bool | None = None,
    email_on_success: bool | None = None,
    webhooks: list[dict[str, Any]] | None = None,
    schedule_interval: Any = _UNSET,
    airflow: dict[str, Any] | None = None,
    triggers: list[dict[str, Any]] | None = None,
) -> Callable[[Callable[[], Any]], Workflow]: ...


def workflow(
    fn: Callable[[], Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    inputs: Any = None,
    outputs: Any = None,
    output: Any = None,
    defaults: dict[str, Any] | None = None,
    timeout: float | str | timedelta | None = None,
    schedule: str | float | timedelta | None = None,
    start_date: str | float | datetime | None = None,
    end_date: str | float | datetime | None = None,
    catchup: bool | None = None,
    max_active_runs: int | None = None,
    tags: list[str] | None = None,
    default_args: dict[str, Any] | None = None,
    email: list[str] | str | None = None,
    email_on_failure: bool | None = None,
    email_on_retry: bool | None = None,
    email_on_success: bool | None = None,
    webhooks: list[dict[str, Any]] | None = None,
    schedule_interval: Any = _UNSET,
    airflow: dict[str, Any] | None = None,
    triggers: list[dict[str, Any]] | None = None,
) -> Workflow | Callable[[Callable[[], Any]], Workflow]:
    """Decorate a function whose body declares steps; returns the validated Workflow."""

    def make(f: Callable[[], Any]) -> Workflow:
        builder = _Builder()
        token = _builder.set(builder)
        try:
            f()
        finally:
            _builder.reset(token)
        spec: dict[str, Any] = {"name": name or f.__name__}
        when = schedule
        if schedule_interval is not _UNSET:  # Airflow's name; None says "started runs only"
            if schedule is not None:
                raise LegatoError(
                    "give `schedule` or `schedule_interval` (its Airflow name), not both"
                )
            when = schedule_interval
            if schedule_interval is None:
                spec["schedule"] = None
        doc = description if description is not None else (f.__doc__ or "").strip()
        if doc:
            spec["description"] = doc
        for key, value in (
            ("inputs", inputs),
            ("outputs", outputs),
            ("output", output),
            ("timeout", _seconds(timeout)),
            ("schedule", _seconds(when)),
            ("start_date", _moment(start_date)),
            ("end_date", _moment(end_date)),
            ("catchup", catchup),
            ("max_active_runs", max_active_runs),
            ("tags", tags),
            ("email", email),
            ("email_on_failure", email_on_failure),
            ("email_on_retry", email_on_retry),
            ("email_on_success", email_on_success),
            ("webhooks", webhooks),
            ("airflow", airflow),
            ("triggers", triggers),
        ):
            if value is not None:
                spec[key] = value
        if defaults:
            spec["defaults"] = {k: _seconds(v) for k, v in defaults.items()}
        if default_args:
            spec["default_args"] = {k: _seconds(v) for k, v in default_args.items()}
        steps: dict[str, Any] = {}
        for node in builder.nodes.values():
            body = dict(node.body)
            if node.depends_on:
                body["depends_on"] = list(node.depends_on)
            steps[node.name] = body
        spec["steps"] = steps
        return build_workflow(spec, functions=builder.functions)

    return make(fn) if fn is not None else make
