"""Kser's OperationRegistry: subscribed tasks and operations become Legato workflows.

A subscribed Task is a one-step workflow; a subscribed Operation is a `build` step (its tasks built
with the run's params) followed by one step per task, in order, each depending on the one before.
The chain is learnt at registration by calling `build_tasks()` without params: a Legato workflow is
a validated, versioned graph that the UI draws and a run is pinned to, so its steps are known before
it runs; the params reach the tasks at run time through the `build` step.
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any, TypeVar

from legato.compat.kser import steps
from legato.compat.kser.task import Operation, Task, claim, where
from legato.errors import LegatoError
from legato.model.build import STEP_NAME, WORKFLOW_NAME, build_workflow
from legato.model.workflow import Workflow

logger = logging.getLogger("legato.kser")
_Class = TypeVar("_Class", bound=type[Task])

_MODULE = steps.__name__
FUNCTIONS = {
    f"{_MODULE}:{fn.__name__}": fn
    for fn in (steps.build_operation, steps.run_task, steps.run_entry)
}


def workflow_name(path: str) -> str:
    """The workflow name of an entrypoint path: itself where Legato's names allow it; a module
    `__main__` becomes `main`, and a leading character other than a letter or digit is dropped."""
    name = re.sub(r"^__main__\.", "main.", path)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("_.-")
    if not WORKFLOW_NAME.fullmatch(name):
        raise LegatoError(
            f"entrypoint {path!r}: gives the workflow name {name!r}, which is not 1-128 letters, "
            "digits, '_', '.' or '-' (set a shorter `path` on the class)"
        )
    return name


def _step_name(index: int | None, cls: type[Task]) -> str:
    base = re.sub(r"\W", "_", cls.__name__, flags=re.ASCII)
    name = base if index is None else f"task{index + 1}_{base}"
    name = name[:128]
    return name if STEP_NAME.fullmatch(name) else f"task{index or 0}"


DESTINATIONS = ("topic", "subject", "queue")  # Kafka, NATS, RabbitMQ


def entrypoint_trigger(path: str, transport: str, **destination: str) -> dict[str, Any]:
    """A broker trigger that starts a run for each Kser message sent to `path` (the message, with
    its uuid as the dedupe key, is the run's input). `destination`: one of topic= (Kafka),
    subject= (NATS) or queue= (RabbitMQ); topic "kser" when none is given."""
    unknown = [k for k in destination if k not in DESTINATIONS]
    if unknown or len(destination) > 1:
        raise LegatoError(
            f"trigger: give one of topic=, subject= or queue=, not {', '.join(sorted(destination))}"
        )
    return {
        "transport": transport,
        **(destination or {"topic": "kser"}),
        "filter": f"{{{{ message.entrypoint == '{path}' }}}}",
        "key": "{{ message.uuid }}",
        "input": "{{ message }}",
    }


class OperationRegistry:
    """`@oregistry.subscribe` a Task or an Operation; `oregistry.workflows()` gives the workflows."""

    def __init__(self, app: Any = None, controller_class: Any = None) -> None:
        self.entrypoints: dict[str, type[Task]] = {}
        self.app = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Kser's Flask hook: tolerated, nothing to set up (Legato's server is the application)."""
        self.app = app

    @property
    def controller(self) -> OperationRegistry:
        """What Kser gives its consumer as REGISTRY; here the registry itself."""
        return self

    def load_tasks(self) -> None:
        """Kser's hook to load operation tasks: nothing to do, subscribe already did."""

    def subscribe(self, callback: _Class) -> _Class:
        if not (isinstance(callback, type) and issubclass(callback, Task)):
            raise LegatoError(
                f"subscribe: takes a Task or Operation class, got {type(callback).__name__}"
            )
        held = self.entrypoints.get(callback.path)
        if held is not None and held is not callback:
            raise LegatoError(
                f"subscribe: entrypoint {callback.path!r} is already {where(held)}; "
                f"{where(callback)} has the same path (rename one, or give it another `path`)"
            )
        claim(callback, subscribed=True)
        self.entrypoints[callback.path] = callback
        logger.info("Operation registry: loaded %s", callback.path)
        return callback

    def register(self, name: str, entrypoint: type[Task]) -> None:
        """Kser's Controller.register; the name must be the class's entrypoint path."""
        if name != entrypoint.path:
            raise LegatoError(
                f"register: name {name!r} must be the entrypoint's path {entrypoint.path!r}"
            )
        self.subscribe(entrypoint)

    def workflow(
        self, entrypoint: str | type[Task], *, transport: str | None = None, **destination: str
    ) -> Workflow:
        """The workflow of one subscribed entrypoint; with `transport`, it carries a trigger that
        starts it from the Kser messages sent to its entrypoint on `destination` (topic=, subject=
        or queue=, see `entrypoint_trigger`; needs Legato's broker triggers)."""
        path = entrypoint if isinstance(entrypoint, str) else entrypoint.path
        cls = self.entrypoints.get(path)
        if cls is None:
            raise LegatoError(f"entrypoint {path!r} is not subscribed to this registry")
        if destination and transport is None:
            raise LegatoError(f"transport: is required with {', '.join(sorted(destination))}=")
        spec = operation_spec(cls) if issubclass(cls, Operation) else task_spec(cls)
        if transport is not None:
            spec["triggers"] = [entrypoint_trigger(path, transport, **destination)]
        return build_workflow(spec, functions=FUNCTIONS)

    def workflows(self, *, transport: str | None = None, **destination: str) -> list[Workflow]:
        """Every subscribed entrypoint's workflow (see `workflow`)."""
        out = [self.workflow(p, transport=transport, **destination) for p in self.entrypoints]
        seen: dict[str, str] = {}
        for wf, path in zip(out, self.entrypoints, strict=True):
            if wf.name in seen:
                raise LegatoError(
                    f"entrypoints {seen[wf.name]!r} and {path!r} give the same workflow name {wf.name!r}"
                )
            seen[wf.name] = path
        return out

    def export(
        self,
        namespace: MutableMapping[str, Any],
        *,
        transport: str | None = None,
        **destination: str,
    ) -> list[Workflow]:
        """Put each workflow in `namespace` as `kser_<Class>`: `oregistry.export(globals())` at the
        end of a file makes them module-level objects, which `legato serve --dags DIR` registers."""
        workflows = self.workflows(transport=transport, **destination)
        for cls, wf in zip(self.entrypoints.values(), workflows, strict=True):
            namespace[f"kser_{cls.__name__}"] = wf
        return workflows


def task_spec(cls: type[Task]) -> dict[str, Any]:
    step = _step_name(None, cls)
    args = {"entrypoint": cls.path, "message": "{{ input }}", "run": "{{ run.id }}"}
    return {
        "name": workflow_name(cls.path),
        "description": f"Kser task {cls.path}",
        "tags": ["kser"],
        "steps": {step: {"python": {"function": f"{_MODULE}:run_entry", "args": args}}},
        "output": f"{{{{ steps.{step}.output }}}}",
    }


def operation_spec(cls: type[Operation]) -> dict[str, Any]:
    try:
        tasks = cls().compute_tasks()
    except LegatoError:
        raise
    except Exception as exc:
        raise LegatoError(
            f"{cls.__name__}.build_tasks: failed when called without params at registration "
            f"({type(exc).__name__}: {exc}); Legato calls it once then to learn the chain of "
            "steps: give its params defaults"
        ) from None
    shape = [t.path for t in tasks]
    build_args = {
        "entrypoint": cls.path,
        "shape": shape,
        "message": "{{ input }}",
        "run": "{{ run.id }}",
    }
    body: dict[str, Any] = {
        "build": {"python": {"function": f"{_MODULE}:build_operation", "args": build_args}}
    }
    previous = "build"
    result = "{{ steps.build.output.result }}"
    for i, task in enumerate(tasks):
        step = _step_name(i, type(task))
        args = {
            "task": f"{{{{ steps.build.output.tasks[{i}] }}}}",
            "result": result,
            "operation": cls.path,
            "operation_uuid": "{{ steps.build.output.uuid }}",
            "last": i == len(tasks) - 1,
        }
        body[step] = {
            "depends_on": previous,
            "python": {"function": f"{_MODULE}:run_task", "args": args},
        }
        previous, result = step, f"{{{{ steps.{step}.output }}}}"
    return {
        "name": workflow_name(cls.path),
        "description": f"Kser operation {cls.path}: {len(tasks)} task(s) in order",
        "tags": ["kser"],
        "steps": body,
        "output": result,
    }
