"""Airflow's TaskFlow in a `@biz` body: `@task()` functions and `get_current_context()`.

A task is a Legato Python step. Its function is wrapped: the wrapper gets, as the step's rendered
arguments, the task's own arguments and what `get_current_context()` returns (the run's conf,
params, dates and its upstream steps' results for `ti.xcom_pull`, bounded in size), sets that
context around the call in a context variable, so two tasks running at once in the worker threads
never see each other's, and passes it to the parameters named after its keys as Airflow does. The
wrapper carries the function's module and qualified name: the step names the user's function, and
the workflow registers the wrapper under that name.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, overload

from legato import dsl
from legato.compat.coworks.nodes import (
    Dag,
    Node,
    _dag,
    checked_task_id,
    current_dag,
    refuse,
    step_options,
)
from legato.dsl import StepNode
from legato.engine.airflow import TaskInstance, step_name

PYTHON_RETRY_ON = ["exception", "network", "timeout", "5xx", "429"]

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "legato_coworks_context", default=None
)

# Rendered for each task: what its context is made of (kinds are filled once the DAG is known).
CONTEXT_TEMPLATE: dict[str, Any] = {
    "conf": "{{ dag_run.conf }}",
    "params": "{{ params }}",
    "run_id": "{{ run_id }}",
    "dag_id": "{{ dag.dag_id }}",
    "ds": "{{ ds }}",
    "ds_nodash": "{{ ds_nodash }}",
    "ts": "{{ ts }}",
    "logical_date": "{{ logical_date }}",
    "data_interval_start": "{{ data_interval_start }}",
    "data_interval_end": "{{ data_interval_end }}",
}


def get_current_context() -> dict[str, Any]:
    """The running task's context: `ti` (xcom_pull), `dag_run` (conf, run_id), `params`, `ds`..."""
    ctx = _context.get()
    if ctx is None:
        raise refuse("get_current_context", "works only inside a running @task")
    return ctx


def _make_context(raw: dict[str, Any]) -> dict[str, Any]:
    task_id = raw.get("task_id")
    ti = TaskInstance(
        raw.get("steps") or {}, raw.get("kinds") or {}, raw["dag_id"], raw["run_id"], task_id
    )
    names = {
        k: v for k, v in raw.items() if k not in ("steps", "kinds", "conf", "dag_id", "task_id")
    }
    dag_run = SimpleNamespace(
        conf=raw.get("conf") or {}, run_id=raw["run_id"], dag_id=raw["dag_id"]
    )
    return {
        **names,
        "ti": ti,
        "task_instance": ti,
        "dag_run": dag_run,
        "dag": SimpleNamespace(dag_id=raw["dag_id"]),
        "task": SimpleNamespace(task_id=task_id),
    }


def _with_context(
    fn: Callable[..., Any], ctx: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Airflow's injection: a parameter named after a context key (`ti=None`, `ds=None`,
    `params`, `dag_run`...) that the call leaves unset gets that value, and `**kwargs` (or
    `**context`) gets every context key the call leaves unset."""
    try:
        signature = inspect.signature(fn)
        bound = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return kwargs  # the call itself then says what is wrong
    params = signature.parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    out = dict(kwargs)
    for p in params:
        if p.kind in named and p.name in ctx and p.name not in bound:
            out[p.name] = ctx[p.name]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        for key, value in ctx.items():
            if key not in out and key not in signature.parameters:
                out[key] = value
    return out


def runner(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a step's function: `args`/`kwargs` are the call's, `airflow` its context (set for
    `get_current_context()`, and injected into the parameters named after its keys)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(
            args: list[Any] | None = None,
            kwargs: dict[str, Any] | None = None,
            airflow: dict[str, Any] | None = None,
        ) -> Any:
            ctx = _make_context(airflow or {})
            token = _context.set(ctx)
            try:
                given = list(args or ())
                return await fn(*given, **_with_context(fn, ctx, given, dict(kwargs or {})))
            finally:
                _context.reset(token)

        return run_async

    @functools.wraps(fn)
    def run(
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        airflow: dict[str, Any] | None = None,
    ) -> Any:
        ctx = _make_context(airflow or {})
        token = _context.set(ctx)
        try:
            given = list(args or ())
            return fn(*given, **_with_context(fn, ctx, given, dict(kwargs or {})))
        finally:
            _context.reset(token)

    return run


def _argument(value: Any, node: StepNode) -> Any:
    """A task's argument: another task's result (its XCom) becomes a template and a dependency."""
    if isinstance(value, Node):
        node.after(*value.tails())
        return f"{{{{ ti.xcom_pull(task_ids={value.task_id!r}) }}}}"
    if isinstance(value, list | tuple):
        return [_argument(v, node) for v in value]
    if isinstance(value, dict):
        return {k: _argument(v, node) for k, v in value.items()}
    return value


def python_step(
    dag: Dag,
    task_id: str,
    fn: Callable[..., Any],
    args: Any = (),
    kwargs: Any = None,
    options: dict[str, Any] | None = None,
    retry_on: list[str] | None = None,
    prewrapped: bool = False,
) -> StepNode:
    """A Python step running `fn(*args, **kwargs)` in its Airflow context (`prewrapped`: `fn` is
    already a `runner`)."""
    name = checked_task_id(task_id, "task", dag)
    wrapped = fn if prewrapped else runner(fn)
    if "<" in wrapped.__qualname__:
        # Not importable (a local function, a lambda): only registered, under a name of its own
        # step, so two local functions of the same name (two lambdas) are not taken for one.
        wrapped.__qualname__ = f"{wrapped.__qualname__}.{name}"
        if wrapped.__qualname__.startswith("<"):  # a module-level lambda: `<lambda>` is no name
            wrapped.__qualname__ = "_" + wrapped.__qualname__
    opts = step_options(dict(options or {}), task_id, retry_on or PYTHON_RETRY_ON)
    context = {**CONTEXT_TEMPLATE, "task_id": task_id}
    node = dsl.task(wrapped, name=name, args={"airflow": context}, **opts)
    assert node.body["python"]["args"]["airflow"] is context
    rendered = node.body["python"]["args"]
    rendered["args"] = _argument(list(args), node)
    rendered["kwargs"] = _argument(dict(kwargs or {}), node)
    dag.finish.append(lambda: context.__setitem__("kinds", kinds_of(dag)))
    dag.last.append(lambda: context.__setitem__("steps", _upstream_template(node)))
    return node


def _upstream_template(node: StepNode) -> str:
    """What renders the results a task can read: its upstream steps' (all of them, not only the
    direct ones), with a bound on their size (see TaskInstance.context_steps)."""
    builder = dsl._builder.get()
    nodes = builder.nodes if builder is not None else {}
    seen: set[str] = set()
    todo = list(node.depends_on)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            up = nodes.get(name)
            todo.extend(up.depends_on if up is not None else ())
    return f"{{{{ ti.context_steps({sorted(seen)!r}) }}}}"


def kinds_of(dag: Dag) -> dict[str, str]:
    """Each step's kind as xcom reads it ("http": a call answered at once; see engine/airflow)."""
    builder = dsl._builder.get()
    out: dict[str, str] = {}
    for step in builder.nodes.values() if builder is not None else ():
        http = step.body.get("http")
        polled = isinstance(http, dict) and "poll" in http
        out[step.name] = "http" if http is not None and not polled else "other"
    return out


class TaskCall(Node):
    """One call of a `@task` function: one step (Airflow's XComArg)."""

    def __init__(self, task_id: str, node: StepNode) -> None:
        self.task_id = task_id
        self.node = node

    def heads(self) -> list[StepNode]:
        return [self.node]

    def tails(self) -> list[StepNode]:
        return [self.node]

    def __getitem__(self, key: str) -> Any:
        raise refuse(
            "multiple_outputs",
            "XComArg[key] is not supported: pass the whole result and read the key in the task",
            self.task_id,
        )


class TaskFactory(Node):
    """A `@task` function: calling it in a `@biz` body declares a step; used in `>>` without
    being called (as the seed's quickstart does), it declares one without arguments."""

    def __init__(self, fn: Callable[..., Any], task_id: str | None, options: dict[str, Any]):
        self.fn = fn
        self.task_id = task_id or fn.__name__
        self.options = options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _dag.get() is None and not args and set(kwargs) <= {"args", "kwargs", "airflow"}:
            # A worker that found the step's function by importing it, not by registration.
            return runner(self.fn)(**kwargs)
        dag = current_dag("@task call")
        calls = dag.calls.setdefault(id(self), [])
        n = len(calls)
        task_id = self.task_id if n == 0 else f"{self.task_id}__{n}"
        node = python_step(dag, task_id, self.fn, args, kwargs, self.options)
        call = TaskCall(task_id, node)
        call.register(dag)
        calls.append(call)
        return call

    def override(self, **options: Any) -> TaskFactory:
        """Airflow's `task.override(task_id=..., retries=...)`: the same function, other options."""
        task_id = options.pop("task_id", None) or self.task_id
        return TaskFactory(self.fn, task_id, {**self.options, **options})

    def expand(self, **_: Any) -> Any:
        raise refuse("expand", "dynamic task mapping is not supported: call the task in a loop")

    def partial(self, **_: Any) -> Any:
        raise refuse("partial", "dynamic task mapping is not supported: call the task in a loop")

    def _first(self) -> TaskCall:
        """The task's first call in the DAG being declared (`>>` on the uncalled function)."""
        calls = current_dag("@task").calls.get(id(self))
        first: TaskCall = calls[0] if calls else self()
        return first

    def heads(self) -> list[StepNode]:
        return self._first().heads()

    def tails(self) -> list[StepNode]:
        return self._first().tails()


@overload
def task(python_callable: Callable[..., Any], **options: Any) -> TaskFactory: ...


@overload
def task(
    python_callable: None = None, **options: Any
) -> Callable[[Callable[..., Any]], TaskFactory]: ...


def task(
    python_callable: Callable[..., Any] | None = None,
    *,
    task_id: str | None = None,
    multiple_outputs: bool | None = None,
    **options: Any,
) -> TaskFactory | Callable[[Callable[..., Any]], TaskFactory]:
    """Airflow's `@task` / `@task()` / `@task(task_id=..., retries=...)`."""

    def wrap(fn: Callable[..., Any]) -> TaskFactory:
        if not callable(fn):
            raise refuse("python_callable", "@task decorates a function")
        return TaskFactory(fn, task_id, options)

    return wrap(python_callable) if python_callable is not None else wrap


__all__ = ["get_current_context", "python_step", "step_name", "task"]
