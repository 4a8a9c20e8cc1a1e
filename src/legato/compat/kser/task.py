"""Kser's Task and Operation, as plain classes whose work Legato runs as durable steps.

A Task runs in one step; an Operation is a task made of other tasks, each its own step, so each may
run in another worker process. Every Task subclass is indexed by its entrypoint path
(`module.Class`, or its own `path` attribute), which is how a step finds the class to run: only
classes this process defined are found, none is imported by a name a definition gives.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from collections.abc import Awaitable, Sequence
from typing import Any, ClassVar

from legato.compat.kser.result import Result
from legato.errors import LegatoError

logger = logging.getLogger("legato.kser")

PENDING, RUNNING, SUCCESS, FAILED = "PENDING", "RUNNING", "SUCCESS", "FAILED"

# Every Task subclass defined in this process, by entrypoint path (a subscribed class, once one is).
ENTRYPOINTS: dict[str, type[Task]] = {}
# The classes a registry subscribed, by entrypoint path: what a step with that path runs.
SUBSCRIBED: dict[str, type[Task]] = {}


def where(cls: type) -> str:
    """A class as `module.Qualname (file:line)`, to tell apart two classes of the same path."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        code = next(
            v.__code__ for v in vars(cls).values() if callable(v) and hasattr(v, "__code__")
        )
    except StopIteration:
        return name
    return f"{name} ({code.co_filename}:{code.co_firstlineno})"


def claim(cls: type[Task], subscribed: bool) -> None:
    """Index `cls` under its path. Another class under the same path is refused when it comes from
    another module (two `path` attributes alike): a step could then run either one. From the same
    module it is the module imported again or a class defined again, which takes over once
    subscribed (a subscribed class is not replaced by one that is merely defined)."""
    held = SUBSCRIBED.get(cls.path) or ENTRYPOINTS.get(cls.path)
    if held is not None and held is not cls and held.__module__ != cls.__module__:
        raise LegatoError(
            f"entrypoint {cls.path!r}: is taken by {where(held)}; {where(cls)} cannot have it too "
            "(give one of them another `path`)"
        )
    if subscribed:
        SUBSCRIBED[cls.path] = ENTRYPOINTS[cls.path] = cls
    elif cls.path not in SUBSCRIBED:
        ENTRYPOINTS[cls.path] = cls


def log_line(cls_name: str, event: str, path: str, uuid: str, text: Any) -> str:
    """Kser's line: `{Class}.{Event}: {path}[{uuid}]: {result}`."""
    return f"{cls_name}.{event}: {path}[{uuid}]: {text}"


class Task:
    """One unit of work: `run()` returns a Result; a non-zero retcode fails it.

    Legato delivers at least once: after a crash a task that was running is run again (with the same
    uuid), so `run` should be idempotent, e.g. keyed on `self.uuid`.
    """

    path: ClassVar[str]
    REQUIRED_FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "path" not in cls.__dict__:
            cls.path = f"{cls.__module__}.{cls.__name__}"
        claim(cls, subscribed=False)

    def __init__(
        self,
        uuid: str | None = None,
        params: dict[str, Any] | None = None,
        status: str = PENDING,
        result: Result | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.uuid = str(uuid) if uuid is not None else str(uuidlib.uuid4())
        self.params: dict[str, Any] = dict(params or {})
        self.status = status
        self.result = result if result is not None else Result(uuid=self.uuid)
        self.metadata: dict[str, Any] = dict(metadata or {})

    def run(self) -> Result | Awaitable[Result] | None:
        """Override; may be a coroutine function (it then runs on a loop of its own)."""
        raise NotImplementedError(f"{type(self).__name__}.run must be implemented")

    def log(self, message: str, level: int = logging.INFO, *args: Any, **kwargs: Any) -> None:
        """Log with Kser's prefix `{TaskName}.{TaskStatus}: {EntryPointPath}[{TaskUUID}]: `."""
        prefix = f"{type(self).__name__}.{self.status}: {self.path}[{self.uuid}]: "
        logger.log(level, prefix + message, *args, **kwargs)

    def check_required_params(self) -> None:
        missing = [f for f in self.REQUIRED_FIELDS if f not in self.params]
        if missing:
            raise LegatoError(f"params.{missing[0]}: is required by {self.path}")

    def __repr__(self) -> str:
        return f"{self.path}[{self.uuid}]"


class Operation(Task):
    """Tasks run one after the other; the first that fails stops the operation.

    `build_tasks(**params)` gives the chain. Legato calls it once when the operation is registered
    (without params, to know the steps) and again at the start of each run (with the run's params, to
    give the tasks their params); both calls must give the same classes in the same order.
    """

    def __init__(
        self,
        uuid: str | None = None,
        params: dict[str, Any] | None = None,
        status: str = PENDING,
        result: Result | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(uuid, params, status, result, metadata)
        self.tasks: list[Task] = []

    def prebuild(self, **kwargs: Any) -> None:
        """Override to check the params before the tasks are built."""

    def build_tasks(self, **kwargs: Any) -> Sequence[Task]:
        """Override: the tasks of the operation, in order."""
        return []

    def finalize(self) -> Operation:
        """Override: after the tasks are built."""
        return self

    def compute_tasks(self, **kwargs: Any) -> list[Task]:
        self.prebuild(**kwargs)
        return checked_tasks(self, self.build_tasks(**kwargs))

    def build(self, **kwargs: Any) -> Operation:
        for task in self.compute_tasks(**kwargs):
            self.add_task(task)
        return self.finalize()

    def add_task(self, task: Task) -> None:
        self.tasks.append(task)

    def set_status(self, status: str, result: Result | None = None) -> None:
        self.status = status
        if result is not None:
            self.result = result

    def next(self, task: Task) -> Task | None:
        for i, t in enumerate(self.tasks):
            if t is task or t.uuid == task.uuid:
                return self.tasks[i + 1] if i + 1 < len(self.tasks) else None
        return None

    def run(self) -> Result:
        raise LegatoError(
            f"{self.path} runs as a Legato workflow: register it (OperationRegistry.workflows()) "
            "and start a run, its tasks are its steps"
        )

    def launch(self) -> Result:
        return self.run()

    def send(self) -> Operation:
        self.run()
        return self


def checked_tasks(op: Operation, tasks: Any) -> list[Task]:
    """What build_tasks returned, refused with a message naming it unless it is a list of tasks."""
    where = f"{type(op).__name__}.build_tasks"
    if not isinstance(tasks, list | tuple):
        raise LegatoError(
            f"{where}: must return a list of Task instances, got {type(tasks).__name__}"
        )
    for i, task in enumerate(tasks):
        if isinstance(task, type) and issubclass(task, Task):
            raise LegatoError(
                f"{where}: item {i} is the class {task.__name__}, not a task: write {task.__name__}()"
            )
        if isinstance(task, Operation):
            raise LegatoError(
                f"{where}: item {i} is an operation ({task.path}); an operation's tasks are Tasks"
            )
        if not isinstance(task, Task):
            raise LegatoError(
                f"{where}: item {i} must be a Task instance, got {type(task).__name__} {task!r:.60}"
            )
    return list(tasks)
