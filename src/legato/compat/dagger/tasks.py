"""Dagger's task types, which users subclass, and the one Python step that calls their methods.

A Dagger task is an object the engine keeps and calls; in Legato a task becomes steps (an emit, a
listen, a wait, a branch) and only the methods a subclass overrides run, in a Python step, on a
fresh instance given the run's input as `runtime_parameters`. The step names the class by its
`module:qualname`, and only classes registered by a template builder in this process can be named,
so a definition posted to a server cannot make this step import or call anything else.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import json
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from legato.errors import LegatoError

KT = TypeVar("KT")
VT = TypeVar("VT")
TaskLookupKey = tuple[str, Any]

_CLASSES: dict[str, type[ITask[Any, Any]]] = {}
_SENT: contextvars.ContextVar[list[tuple[str, Any]] | None] = contextvars.ContextVar(
    "dagger_sent", default=None
)


class TaskOperator(enum.Enum):
    """How a parallel group joins: every child succeeded, or at least one."""

    JOIN_ALL = "JOIN_ALL"
    ATLEAST_ONE = "ATLEAST_ONE"


class TaskStatusEnum(enum.Enum):
    NOT_STARTED = "NOT_STARTED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILURE = "FAILURE"
    SKIPPED = "SKIPPED"
    STOPPED = "STOPPED"


class ITask(Generic[KT, VT]):
    """What every task instance has: its name (also its step's), its topic, and `next_dags`, the
    names of the tasks that follow it (a decision task returns one of them)."""

    def __init__(
        self, name: str = "", topic: str | None = None, next_dags: list[str] | None = None
    ) -> None:
        self.name = self.id = name
        self.topic: str = topic or ""
        self.next_dags = list(next_dags or [])
        self.status = TaskStatusEnum.EXECUTING
        self.runtime_parameters: dict[str, Any] = {}

    def get_status(self) -> TaskStatusEnum:
        return self.status

    async def execute(
        self, runtime_parameters: dict[str, Any], workflow_instance: Any = None
    ) -> Any:
        return None

    async def stop(self, runtime_parameters: dict[str, Any], workflow_instance: Any = None) -> None:
        return None


class ExecutorTask(ITask[KT, VT]):
    """Runs `execute` as a Python step."""


class KafkaCommandTask(ITask[KT, VT]):
    """Publishes one message to its topic (an emit step). Without an `execute` of its own, the
    message is the runtime parameters; with one, what it sends (`self.send(value)` or
    `workflow_engine.topics[self.topic].send(value=...)`) or else returns is the message."""

    async def send(self, value: Any = None, key: Any = None, topic: str | None = None) -> None:
        record(topic or self.topic or "", value)


class KafkaListenerTask(ITask[KT, VT]):
    """Waits for a message on its topic whose correlatable key equals the runtime parameter named
    by `correlatable_key` (a listen step). `get_correlatable_key(payload)` reads the key from a
    message; `on_message`, when overridden, runs once the message arrived (False fails the step)."""

    correlatable_key: str | None = None

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        body = json.loads(payload) if isinstance(payload, str | bytes) else payload
        name = self.correlatable_key or ""
        return name, body[name]

    async def on_message(
        self, runtime_parameters: dict[str, Any], *args: Any, **kwargs: Any
    ) -> bool:
        return True


class DecisionTask(ITask[KT, VT]):
    """`evaluate(**runtime_parameters)` returns the name of the next task to run (one of
    `self.next_dags`), or None to run none of them."""

    async def evaluate(self, **kwargs: Any) -> Any:
        return self.next_dags[0] if self.next_dags else None


class TriggerTask(ITask[KT, VT]):
    """Waits until the time in the runtime parameter named by the builder's lookup key, then
    runs `execute`."""

    time_to_execute: Any = None


class IntervalTask(TriggerTask[KT, VT]):
    """From its trigger time, calls `interval_execute` every interval until it returns True or the
    force-complete time passes."""

    async def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        return True


class ParallelCompositeTask(ITask[KT, VT]):
    """The type of a parallel group (its children run at once and join by its operator)."""


class SensorTask(KafkaListenerTask[KT, VT]):
    pass


class DefaultTemplateDAGInstance(ITask[KT, VT]):
    """The type of a whole template's instance (a Legato run)."""


class DefaultProcessTemplateDAGInstance(ITask[KT, VT]):
    """The type of a process (a named chain of tasks within the run)."""


class ITemplateDAGInstance(DefaultTemplateDAGInstance[KT, VT]):
    pass


def overrides(cls: type, method: str) -> bool:
    """Whether a user class defines `method` itself rather than inheriting this module's."""
    for klass in cls.__mro__:
        if method in klass.__dict__:
            return klass.__module__ != __name__
    return False


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_class(cls: type[ITask[Any, Any]]) -> str:
    path = class_path(cls)
    _CLASSES[path] = cls
    return path


def record(topic: str, value: Any) -> None:
    """A message a command task sends: kept for its emit step, which publishes it after commit."""
    sent = _SENT.get()
    if sent is None:
        raise LegatoError(
            "a topic's send() is only possible inside a KafkaCommandTask's execute (Legato "
            "publishes the message itself once the step is committed)"
        )
    if isinstance(value, bytes | str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            value = value.decode() if isinstance(value, bytes) else value
    sent.append((topic, value))


@dataclass
class WorkflowInstance:
    """What a task's `workflow_instance` argument offers: the run's id and its input."""

    id: str
    runtime_parameters: dict[str, Any]


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


def _as_time(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime

    return datetime.fromisoformat(str(value)).timestamp()


async def run_task(
    task: str,
    method: str,
    name: str,
    runtime_parameters: dict[str, Any],
    topic: str | None = None,
    next_dags: list[str] | None = None,
    message: Any = None,
    interval: str | None = None,
    until: str | None = None,
    run_id: str | None = None,
) -> Any:
    """The Python step of a Dagger task: call `method` of a new instance of the class `task`."""
    cls = _CLASSES.get(task)
    if cls is None:
        raise LegatoError(
            f"task class {task!r} is not registered in this process: import the module that "
            "builds its template (legato serve --dags DIR)"
        )
    instance = cls(name=name, topic=topic, next_dags=next_dags)
    instance.runtime_parameters = runtime_parameters
    workflow = WorkflowInstance(run_id or "", runtime_parameters)
    if method == "execute" and issubclass(cls, KafkaCommandTask):
        sent: list[tuple[str, Any]] = []
        token = _SENT.set(sent)
        try:
            returned = await _call(instance.execute, runtime_parameters, workflow)
        finally:
            _SENT.reset(token)
        if len(sent) > 1:
            raise LegatoError(
                f"{name}: execute sent {len(sent)} messages; a command task sends one"
            )
        if sent:
            return {"topic": sent[0][0], "message": sent[0][1]}
        return {"topic": topic, "message": runtime_parameters if returned is None else returned}
    if method == "execute":
        return await _call(instance.execute, runtime_parameters, workflow)
    if method == "on_message" and isinstance(instance, KafkaListenerTask):
        raw = message if isinstance(message, str) else json.dumps(message)
        if not await _call(instance.on_message, runtime_parameters, raw):
            raise LegatoError(f"{name}: on_message returned False for the message it received")
        return message
    if method == "evaluate" and isinstance(instance, DecisionTask):
        chosen = await _call(instance.evaluate, **runtime_parameters)
        return None if chosen is None else str(chosen)
    if method == "interval_execute":
        return await _interval(instance, runtime_parameters, interval, until)
    raise LegatoError(f"{name}: {cls.__name__} has no task method {method!r}")


async def _interval(
    task: ITask[Any, Any], params: dict[str, Any], interval: str | None, until: str | None
) -> dict[str, Any]:
    """Check, then every interval, until the check holds or the force-complete time is reached.
    A restart runs this step again from the top: the deadline is a time, so none is lost."""
    assert isinstance(task, IntervalTask)
    every = float(params.get(interval, 1) if interval else 1)
    deadline = _as_time(params[until]) if until and params.get(until) is not None else None
    checks = 0
    while True:
        checks += 1
        if await _call(task.interval_execute, params):
            return {"completed": True, "checks": checks}
        if deadline is not None and time.time() + every > deadline:
            return {"completed": False, "forced": True, "checks": checks}
        await asyncio.sleep(max(every, 0.01))
