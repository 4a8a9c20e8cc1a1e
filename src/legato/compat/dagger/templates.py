"""Dagger's template, process and task builders, with Dagger's method names, and the templates they
build. A template's processes and tasks are only a description here: `compile.py` turns the whole
template into one Legato workflow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from legato.compat.dagger.tasks import (
    DecisionTask,
    ExecutorTask,
    IntervalTask,
    ITask,
    KafkaCommandTask,
    KafkaListenerTask,
    ParallelCompositeTask,
    TaskOperator,
    TriggerTask,
    register_class,
)
from legato.errors import LegatoError


class InvalidTaskType(LegatoError):
    """A builder was given a task type it cannot model (Dagger's own name for this error)."""


@dataclass(frozen=True)
class Topic:
    """A named destination: a Kafka topic, a NATS subject or a RabbitMQ queue."""

    name: str
    key_type: Any = bytes
    value_type: Any = bytes

    async def send(self, key: Any = None, value: Any = None, **_: Any) -> None:
        from legato.compat.dagger.tasks import record

        record(self.name, value)


# A name every transport takes as one destination: a Kafka topic, a NATS subject (no wildcard `*`
# or `>`, no space, no empty token) and a RabbitMQ queue. Refused when the template is built, not
# at the first publish of a run.
TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def check_topic(name: object, call: str) -> str:
    """`name` if it is a usable topic name; else an error naming the Dagger call that gave it."""
    if isinstance(name, str) and TOPIC_NAME.fullmatch(name) and len(name) <= 249:
        return name
    raise LegatoError(
        f"{call}({name!r}): a topic name is letters, digits, '_', '-' and '.' between them "
        "(at most 249): NATS refuses wildcards ('*', '>') and spaces in a subject"
    )


def topic_name(topic: Topic | str, field_name: str = "set_topic") -> str:
    if isinstance(topic, Topic):
        return check_topic(topic.name, field_name)
    if isinstance(topic, str) and topic:
        return check_topic(topic, field_name)
    raise LegatoError(f"{field_name}: give a topic from Dagger.create_topic or its name")


@dataclass(eq=False)
class TaskTemplate:
    """One task of a process: its kind, its class and what follows it."""

    kind: str  # command, listener, executor, decision, trigger, interval, parallel
    type: type[ITask[Any, Any]]
    name: str | None = None
    topic: str | None = None
    next: list[TaskTemplate] = field(default_factory=list)
    time_key: str | None = None  # trigger/interval: the runtime parameter holding the start time
    until_key: str | None = None  # interval: the force-complete time
    interval_key: str | None = None  # interval: the seconds between checks
    timeout: float | None = None
    children: list[TaskTemplate] = field(default_factory=list)  # parallel
    operator: TaskOperator = TaskOperator.JOIN_ALL


@dataclass(eq=False)
class ProcessTemplate:
    """A named chain of tasks (PAYMENT, SHIPPING); processes follow one another."""

    name: str
    root: TaskTemplate | None
    next: list[ProcessTemplate] = field(default_factory=list)
    type: Any = None
    parallel: list[ProcessTemplate] = field(default_factory=list)
    operator: TaskOperator = TaskOperator.JOIN_ALL


class TaskTemplateBuilder:
    """What every task builder offers: a name, a type, the tasks that follow, and build()."""

    kind = "executor"
    base: type[ITask[Any, Any]] = ExecutorTask

    def __init__(self, app: Any = None, *_: Any) -> None:
        self._name: str | None = None
        self._type: type[ITask[Any, Any]] | None = None
        self._next: list[TaskTemplate] = []
        self._topic: str | None = None
        self._timeout: float | None = None

    def set_name(self, name: str) -> TaskTemplateBuilder:
        self._name = name
        return self

    def set_type(self, task_type: type[ITask[Any, Any]]) -> TaskTemplateBuilder:
        if not (isinstance(task_type, type) and issubclass(task_type, self.base)):
            raise InvalidTaskType(
                f"set_type: {task_type!r} is not a {self.base.__name__} ({type(self).__name__})"
            )
        self._type = task_type
        return self

    def set_next(self, task_template: TaskTemplate) -> TaskTemplateBuilder:
        if not isinstance(task_template, TaskTemplate):
            raise LegatoError("set_next: give a task template, the result of a builder's build()")
        self._next.append(task_template)
        return self

    def set_max_run_duration(self, seconds: float) -> TaskTemplateBuilder:
        """Bounds the task's step (Legato's step timeout); 0 means no bound. Checked here, so
        that a bad value names this call rather than the step's `timeout` it becomes."""
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not number or not math.isfinite(seconds) or seconds < 0:
            raise LegatoError(
                f"set_max_run_duration({seconds!r}): give a number of seconds, 0 or more"
            )
        self._timeout = float(seconds) or None
        return self

    def set_allow_skip_to(self, allow: bool) -> TaskTemplateBuilder:
        return self

    def _template(self, **extra: Any) -> TaskTemplate:
        if self._type is None:
            raise LegatoError(f"{type(self).__name__}: set_type was not called before build()")
        register_class(self._type)
        return TaskTemplate(
            kind=self.kind,
            type=self._type,
            name=self._name,
            topic=self._topic,
            next=list(self._next),
            timeout=self._timeout,
            **extra,
        )

    def build(self) -> TaskTemplate:
        return self._template()


class DefaultTaskTemplateBuilder(TaskTemplateBuilder):
    """An ExecutorTask: its `execute` runs as a Python step."""


class KafkaCommandTaskTemplateBuilder(TaskTemplateBuilder):
    kind = "command"
    base: type[ITask[Any, Any]] = KafkaCommandTask

    def set_topic(self, topic: Topic | str) -> KafkaCommandTaskTemplateBuilder:
        self._topic = topic_name(topic)
        return self

    def build(self) -> TaskTemplate:
        if self._topic is None:
            raise LegatoError("KafkaCommandTaskTemplateBuilder: set_topic was not called")
        return self._template()


class KafkaListenerTaskTemplateBuilder(KafkaCommandTaskTemplateBuilder):
    kind = "listener"
    base = KafkaListenerTask

    def set_reprocess_on_message(self, reprocess: bool) -> KafkaListenerTaskTemplateBuilder:
        return self

    def build(self) -> TaskTemplate:
        if self._type is not None and not getattr(self._type, "correlatable_key", None):
            raise LegatoError(
                f"{self._type.__name__}: correlatable_key: name the runtime parameter whose "
                "value a message must carry to reach this task (e.g. correlatable_key = "
                '"order_number")'
            )
        return super().build()


class DecisionTaskTemplateBuilder(TaskTemplateBuilder):
    kind = "decision"
    base = DecisionTask


class TriggerTaskTemplateBuilder(TaskTemplateBuilder):
    kind = "trigger"
    base = TriggerTask

    def __init__(self, app: Any = None, *_: Any) -> None:
        super().__init__(app)
        self._time_key: str | None = None

    def set_time_to_execute_lookup_key(self, key: str) -> TriggerTaskTemplateBuilder:
        self._time_key = key
        return self

    def build(self) -> TaskTemplate:
        if self._time_key is None and self.kind == "trigger":
            raise LegatoError(
                "TriggerTaskTemplateBuilder: set_time_to_execute_lookup_key was not called"
            )
        return self._template(time_key=self._time_key)


class IntervalTaskTemplateBuilder(TriggerTaskTemplateBuilder):
    kind = "interval"
    base = IntervalTask

    def __init__(self, app: Any = None, *_: Any) -> None:
        super().__init__(app)
        self._until_key: str | None = None
        self._interval_key: str | None = None

    def set_time_to_force_complete_lookup_key(self, key: str) -> IntervalTaskTemplateBuilder:
        self._until_key = key
        return self

    def set_interval_execute_period_lookup_key(self, key: str) -> IntervalTaskTemplateBuilder:
        self._interval_key = key
        return self

    def build(self) -> TaskTemplate:
        return self._template(
            time_key=self._time_key, until_key=self._until_key, interval_key=self._interval_key
        )


class ParallelCompositeTaskTemplateBuilder(TaskTemplateBuilder):
    """Children run at once; the next task runs when all (JOIN_ALL) or one (ATLEAST_ONE) of them
    succeeded."""

    kind = "parallel"
    base = ParallelCompositeTask

    def __init__(self, app: Any = None, *_: Any) -> None:
        super().__init__(app)
        self._children: list[TaskTemplate] = []
        self._operator = TaskOperator.JOIN_ALL
        self._type = ParallelCompositeTask

    def add_parallel_task(
        self, task_template: TaskTemplate
    ) -> ParallelCompositeTaskTemplateBuilder:
        if not isinstance(task_template, TaskTemplate):
            raise LegatoError("add_parallel_task: give a task template, the result of build()")
        self._children.append(task_template)
        return self

    def set_task_operator(self, operator: TaskOperator) -> ParallelCompositeTaskTemplateBuilder:
        if not isinstance(operator, TaskOperator):
            raise LegatoError("set_task_operator: give TaskOperator.JOIN_ALL or ATLEAST_ONE")
        self._operator = operator
        return self

    def build(self) -> TaskTemplate:
        if not self._children:
            raise LegatoError("ParallelCompositeTaskTemplateBuilder: add_parallel_task first")
        return self._template(children=list(self._children), operator=self._operator)


ParallelCompositeTaskTemplate = TaskTemplate
DefaultTaskTemplate = TaskTemplate
DefaultKafkaTaskTemplate = TaskTemplate
DefaultTriggerTaskTemplate = TaskTemplate
DefaultIntervalTaskTemplate = TaskTemplate
