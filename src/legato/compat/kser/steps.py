"""The Python functions Legato's steps call to run Kser operations and tasks.

They take and return plain JSON (the step's rendered args and its output), so each step can run in
any worker process that knows the task's class: a step finds it by its entrypoint path among the
Task subclasses the process defined.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any

import orjson

from legato.compat.kser.result import Result
from legato.compat.kser.task import (
    ENTRYPOINTS,
    FAILED,
    RUNNING,
    SUCCESS,
    Operation,
    Task,
    log_line,
    logger,
)
from legato.errors import LegatoError

MESSAGE_FIELDS = ("uuid", "entrypoint", "params", "result", "metadata")


class TaskFailed(Exception):
    """A task's result had a non-zero retcode (or it raised): its step, and the operation, fail."""


@dataclass(frozen=True, slots=True)
class Message:
    """A Kser message as a run's input: `{uuid, entrypoint, params, result, metadata}`."""

    uuid: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    metadata: dict[str, Any]


def read_message(data: Any, entrypoint: str) -> Message:
    """The run's input read as a Kser message; a wrong shape is an error naming the field."""
    if not isinstance(data, dict):
        raise LegatoError(
            "input: must be a Kser message {uuid, entrypoint, params, result, metadata}"
        )
    if data and not any(k in data for k in MESSAGE_FIELDS):
        raise LegatoError(
            f"input: a Kser message is {{uuid, entrypoint, params, result, metadata}}; put the "
            f"parameters under `params` (got {', '.join(sorted(map(str, data)))})"
        )
    sent_to = data.get("entrypoint")
    if sent_to is not None and sent_to != entrypoint:
        raise LegatoError(f"entrypoint: is {sent_to!r}, but this workflow runs {entrypoint!r}")
    uuid = data.get("uuid")
    if uuid is not None and not isinstance(uuid, str):
        raise LegatoError("uuid: must be a string")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise LegatoError("params: must be an object")
    if "self" in params:  # passed as build_tasks(**params): it would clash with the method's own
        raise LegatoError("params.self: is a reserved name (operations take params as keywords)")
    result = data.get("result")
    if result is not None:
        forwarded = Result.from_dict(result, "result")
        if forwarded.retcode != 0:
            raise LegatoError(
                f"result.retcode: is {forwarded.retcode}: the message forwards a failed result, "
                "so its entrypoint does not run (a non-zero retcode fails)"
            )
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise LegatoError("metadata: must be an object")
    return Message(uuid or None, params, result, metadata)


def find_entrypoint(path: str) -> type[Task]:
    """The Task class named `path` among those this process defined.

    Never imported by name: a step's args come from a definition, and importing whatever module
    one names would run its code; the process imports its files itself (`--dags DIR`)."""
    cls = ENTRYPOINTS.get(path)
    if cls is None:
        raise LegatoError(
            f"entrypoint {path!r} is not known in this process: start it with the file that "
            "defines the class (legato serve|worker --dags DIR)"
        )
    return cls


def build_operation(entrypoint: str, shape: list[str], message: Any, run: str) -> dict[str, Any]:
    """The operation's first step: its tasks built with the run's params, checked against `shape`
    (the classes it had when it was registered, which are the workflow's steps)."""
    cls = find_entrypoint(entrypoint)
    if not issubclass(cls, Operation):
        raise LegatoError(f"entrypoint {entrypoint!r} is a Task, not an Operation")
    msg = read_message(message, entrypoint)
    op_uuid = msg.uuid or run
    start = Result.from_dict({"uuid": op_uuid, **(msg.result or {})})
    op = cls(uuid=op_uuid, params=msg.params, status=RUNNING, result=start, metadata=msg.metadata)
    op.check_required_params()
    tasks = op.compute_tasks(**msg.params)
    op.tasks = tasks
    op.finalize()
    paths = [t.path for t in tasks]
    if paths != shape:
        raise LegatoError(
            f"{cls.__name__}.build_tasks: gave {paths} for these params but {shape} when the "
            "operation was registered; an operation's chain of tasks is fixed at registration "
            "(register one operation per chain)"
        )
    planned = []
    for i, t in enumerate(tasks):
        try:
            orjson.dumps([t.params, t.metadata])
        except TypeError as exc:
            raise LegatoError(
                f"{cls.__name__}.build_tasks: item {i}'s params are not JSON: {exc}"
            ) from None
        planned.append(
            {"entrypoint": t.path, "uuid": t.uuid, "params": t.params, "metadata": t.metadata}
        )
    logger.info(log_line(cls.__name__, "Running", entrypoint, op_uuid, f"{len(tasks)} task(s)"))
    if not tasks:  # nothing to run: the operation ends here, with the result it was given
        logger.info(log_line(cls.__name__, "Success", entrypoint, op_uuid, start))
        controller(True, entrypoint, op_uuid, start)
    return {"uuid": op_uuid, "tasks": planned, "result": start.to_dict()}


def run_task(
    task: dict[str, Any],
    result: Any,
    operation: str | None = None,
    operation_uuid: str | None = None,
    last: bool = True,
) -> dict[str, Any]:
    """One task as one step: run it with the chain's result so far; return the merged result, or
    raise TaskFailed (which fails the step, hence the run) on a non-zero retcode. An exception
    the task raised is its failed result, and stays the cause of TaskFailed: the step's logs keep
    its traceback."""
    cls = find_entrypoint(task["entrypoint"])
    t = cls(
        uuid=task["uuid"],
        params=task.get("params"),
        status=RUNNING,
        result=Result.from_dict(result) if result is not None else None,
        metadata=task.get("metadata"),
    )
    name = type(t).__name__
    logger.info(log_line(name, "Running", t.path, t.uuid, "started"))
    error: Exception | None = None
    try:
        t.check_required_params()
        own = _as_result(t, t.run())
    except Exception as exc:  # Kser's way: an exception is a failed result, logged as such
        own, error = Result.from_exception(exc, uuid=t.uuid), exc
    merged = t.result + own
    op_name = operation.rpartition(".")[2] if operation else ""
    if merged.retcode != 0:
        t.status = FAILED
        line = log_line(name, "Failed", t.path, t.uuid, own)
        logger.error(line)
        if operation:
            logger.error(log_line(op_name, "Failed", operation, operation_uuid or "", merged))
        controller(False, operation or t.path, operation_uuid or t.uuid, merged)
        raise TaskFailed(f"{line} (retcode {merged.retcode})") from error
    t.status = SUCCESS
    logger.info(log_line(name, "Success", t.path, t.uuid, own))
    if operation and last:
        logger.info(log_line(op_name, "Success", operation, operation_uuid or "", merged))
    if last:
        controller(True, operation or t.path, operation_uuid or t.uuid, merged)
    return merged.to_dict()


def controller(ok: bool, path: str, uuid: str, result: Result) -> None:
    """Kser's consumer line once a message's entrypoint is done: `Controller.Success: ...` (or
    `Controller.Failed: ...` at ERROR), after the task's or operation's own line."""
    if ok:
        logger.info(log_line("Controller", "Success", path, uuid, result))
    else:
        logger.error(log_line("Controller", "Failed", path, uuid, result))


def run_entry(entrypoint: str, message: Any, run: str) -> dict[str, Any]:
    """A subscribed Task started on its own (the seed's producer sends `__main__.DiceRoll`)."""
    msg = read_message(message, entrypoint)
    uuid = msg.uuid or run
    task = {"entrypoint": entrypoint, "uuid": uuid, "params": msg.params, "metadata": msg.metadata}
    start = {"uuid": uuid, **(msg.result or {})}  # a forwarded result keeps its own uuid
    return run_task(task, start)


def _as_result(task: Task, value: Any) -> Result:
    if inspect.iscoroutine(value):
        value = asyncio.run(value)  # an async run(): this step is on a worker thread of its own
    if value is None:
        return Result(uuid=task.uuid)
    if isinstance(value, Result):
        return value.check(f"{type(task).__name__}.run")
    if isinstance(value, dict):
        return Result.from_dict(value, f"{type(task).__name__}.run")
    raise LegatoError(
        f"{type(task).__name__}.run: must return a Result, got {type(value).__name__}"
    )
