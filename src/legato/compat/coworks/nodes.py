"""What every CoWorks/Airflow object declared in a `@biz` body shares: its Legato steps, the `>>` and
`<<` dependencies (with lists on either side), and the state of the DAG being declared.

An operator is one or a few Legato steps (legato.dsl's StepNode); `heads` are the steps its
upstream tasks must run before, `tails` the steps its downstream tasks wait for. Errors name the
CoWorks/Airflow field (`cws_name`, `on_failure`, ...) and the task, as a DefinitionError.
"""

from __future__ import annotations

import contextvars
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from legato.dsl import StepNode
from legato.engine.airflow import step_name
from legato.errors import DefinitionError, Problem

STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def refuse(field_name: str, message: str, task_id: str | None = None) -> DefinitionError:
    where = f" (task {task_id!r})" if task_id else ""
    return DefinitionError([Problem(field_name, message + where)], "CoWorks definition")


@dataclass
class Dag:
    """The `@biz` being declared: its options and what is checked once its body has run."""

    native: bool = False
    tasks: dict[str, Node] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)  # step names taken, to their task ids
    finish: list[Callable[[], None]] = field(default_factory=list)
    # Each `@task` function's calls in this DAG (keyed by the function's id): counted per DAG, as
    # Airflow does, so a module-level task used by two DAGs has the same steps in each.
    calls: dict[int, list[Any]] = field(default_factory=dict)
    last: list[Callable[[], None]] = field(default_factory=list)  # once `finish` has run


_dag: contextvars.ContextVar[Dag | None] = contextvars.ContextVar(
    "legato_coworks_dag", default=None
)


def current_dag(what: str) -> Dag:
    dag = _dag.get()
    if dag is None:
        raise refuse("task_id", f"a {what} must be declared inside a @biz function")
    return dag


def checked_task_id(task_id: Any, what: str, dag: Dag | None = None) -> str:
    """The step name of a task id, refused when no step name can stand for it or (given the
    `dag`) when another task already has it."""
    if not isinstance(task_id, str) or not task_id:
        raise refuse("task_id", f"a {what} needs a task_id (a non-empty string)")
    name = step_name(task_id)
    if not STEP_NAME.fullmatch(name):
        raise refuse(
            "task_id",
            f"{task_id!r} must be letters, digits, '_', '-' or '.', starting with a letter",
        )
    if dag is not None:
        taken = dag.steps.get(name)
        if taken == task_id:
            raise refuse("task_id", f"two tasks are named {task_id!r}")
        if taken is not None:
            raise refuse(
                "task_id",
                f"{taken!r} and {task_id!r} are both the step {name!r} ('-' and '.' become '_')",
            )
        dag.steps[name] = task_id
    return name


class Node:
    """Anything `>>` and `<<` join: an operator, a group, a task."""

    task_id: str

    def heads(self) -> list[StepNode]:
        raise NotImplementedError

    def tails(self) -> list[StepNode]:
        raise NotImplementedError

    def register(self, dag: Dag, *task_ids: str) -> None:
        for tid in task_ids or (self.task_id,):
            if tid in dag.tasks:
                raise refuse("task_id", f"two tasks are named {tid!r}")
            dag.tasks[tid] = self

    def __rshift__(self, other: Any) -> Any:
        for target in nodes_of(other):
            link(self, target)
        return other

    def __lshift__(self, other: Any) -> Any:
        for source in nodes_of(other):
            link(source, self)
        return other

    def __rrshift__(self, other: Any) -> Node:
        for source in nodes_of(other):
            link(source, self)
        return self

    def __rlshift__(self, other: Any) -> Node:
        for target in nodes_of(other):
            link(self, target)
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task_id}>"


def link(upstream: Node, downstream: Node) -> None:
    tails = upstream.tails()
    for head in downstream.heads():
        head.after(*tails)


def nodes_of(value: Any) -> list[Node]:
    if isinstance(value, Node):
        return [value]
    if isinstance(value, list | tuple | set):
        out: list[Node] = []
        for item in value:
            out.extend(nodes_of(item))
        return out
    raise refuse(">>", f"cannot set a dependency on {type(value).__name__} {value!r}")


def chain(*tasks: Any) -> None:
    """Airflow's `chain(a, [b, c], d)`: each item before the next; two lists side by side are
    joined pairwise, as Airflow does."""
    for up, down in itertools.pairwise(tasks):
        if isinstance(up, list | tuple) and isinstance(down, list | tuple):
            if len(up) != len(down):
                raise refuse("chain", "two lists side by side must have the same length")
            for u, d in zip(up, down, strict=True):
                link_all(u, d)
        else:
            link_all(up, down)


def cross_downstream(from_tasks: Any, to_tasks: Any) -> None:
    """Airflow's `cross_downstream`: every task of the first list before every one of the second."""
    link_all(from_tasks, to_tasks)


def link_all(upstream: Any, downstream: Any) -> None:
    for u in nodes_of(upstream):
        for d in nodes_of(downstream):
            link(u, d)


def task_names(value: Any, field_name: str, task_id: str) -> list[str]:
    """`on_success="a"` or `on_success=["a", "b"]` (task ids) as step names."""
    items: Iterable[Any] = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise refuse(field_name, "must be a task id or a list of task ids", task_id)
    names = []
    for item in items:
        if not isinstance(item, str) or not STEP_NAME.fullmatch(step_name(item)):
            raise refuse(field_name, f"{item!r} is not a task id", task_id)
        names.append(step_name(item))
    return names


class Native(str):
    """A template standing for another task's result (an XComArg): rendered to its value."""


def as_text(value: Any) -> Any:
    """Airflow renders a template to text unless `render_template_as_native_obj=True`; Legato
    renders a lone `{{ expression }}` to its value, so such a string is made text again."""
    if isinstance(value, Native):
        return str(value)
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("{{") and stripped.endswith("}}") and value.count("{{") == 1:
            return value + "{{ '' }}"
        return value
    if isinstance(value, dict):
        return {k: as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_text(v) for v in value]
    return value


TRIGGER_RULES = {
    "all_success": "all_succeeded",
    "all_done": "all_done",
    "one_success": "one_succeeded",
    "none_failed": "none_failed",
    "none_failed_min_one_success": "none_failed",
}
IGNORED_OPERATOR_ARGS = ("owner", "pool", "queue", "priority_weight", "do_xcom_push")


def step_options(kwargs: dict[str, Any], task_id: str, retry_on: list[str]) -> dict[str, Any]:
    """Airflow's BaseOperator arguments as Legato step options; an unknown one is refused."""
    retry: dict[str, Any] = {"on": retry_on}
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "retries":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise refuse("retries", "must be a whole number, 0 or more", task_id)
            retry["retries"] = value
        elif key in ("retry_delay", "max_retry_delay", "execution_timeout"):
            if not isinstance(value, timedelta | int | float) or isinstance(value, bool):
                raise refuse(key, "must be a timedelta (or seconds)", task_id)
            value = value.total_seconds() if isinstance(value, timedelta) else value
            if value < 0:
                raise refuse(key, "must not be negative", task_id)
            if key == "retry_delay":
                retry["delay"] = value
            elif key == "max_retry_delay":
                retry["max_delay"] = value
            else:
                out["timeout"] = value
        elif key == "retry_exponential_backoff":
            retry["backoff"] = 2.0 if value else 1.0
        elif key == "trigger_rule":
            rule = TRIGGER_RULES.get(str(getattr(value, "value", value)))
            if rule is None:
                raise refuse("trigger_rule", f"must be one of {', '.join(TRIGGER_RULES)}", task_id)
            out["trigger"] = rule
        elif key in ("doc", "doc_md"):
            out["description"] = str(value)
        elif key not in IGNORED_OPERATOR_ARGS:
            raise refuse(key, "is not an argument Legato's CoWorks operators know", task_id)
    out["retry"] = retry
    return out
