"""Dagger's template and process builders, and a built template: a Legato workflow plus what
`create_instance` needs to make the input of one run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from legato.compat.dagger.compile import compile_template
from legato.compat.dagger.tasks import TaskOperator
from legato.compat.dagger.templates import ProcessTemplate, TaskTemplate
from legato.engine.ids import reserved
from legato.errors import LegatoError
from legato.model.workflow import Workflow

# Options of Dagger's create_instance that place or submit the instance, not runtime parameters.
_PLACEMENT = ("repartition", "seed", "partition_key_lookup", "submit_task")
_NAMESPACE = uuid.UUID("7b0d4a8e-5f39-4c57-9a7e-2d6c1b0e9f31")


def run_id_of(instance_id: Any) -> str:
    """A run id (32 hex digits) for a Dagger instance id: a UUID's own hex (uuid1 or uuid4), else
    one derived from the id, so the same id always names the same run."""
    if isinstance(instance_id, uuid.UUID):
        text = instance_id.hex
    else:
        text = str(instance_id).replace("-", "").lower()
    hex_digits = len(text) == 32 and all(c in "0123456789abcdef" for c in text)
    if hex_digits and not reserved(text) and text != "0" * 32:
        return text
    return uuid.uuid5(_NAMESPACE, str(instance_id)).hex


@dataclass
class TemplateDAGInstance:
    """An instance made by `create_instance`: what `submit` starts as one run."""

    template: TemplateDAG
    id: Any
    runtime_parameters: dict[str, Any]
    run_id: str = ""


@dataclass
class TemplateDAG:
    """A built template: its workflow (registered under the template's name) and the listener
    classes of each topic, whose `get_correlatable_key` reads the key of a message."""

    name: str
    root: ProcessTemplate
    type: Any = None
    workflow: Workflow = field(init=False)
    listeners: dict[str, list[type]] = field(init=False)
    required: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.workflow, self.listeners, self.required = compile_template(self.name, self.root)

    async def create_instance(self, id: Any, **runtime_parameters: Any) -> TemplateDAGInstance:
        placement = {k: runtime_parameters.pop(k) for k in _PLACEMENT if k in runtime_parameters}
        missing = [k for k in self.required if runtime_parameters.get(k) is None]
        if missing:
            raise LegatoError(
                "runtime_parameters: "
                + "; ".join(f"{k} is missing (needed by {self.required[k]})" for k in missing)
            )
        try:
            params = orjson.loads(orjson.dumps(runtime_parameters, default=str))
        except TypeError as exc:
            raise LegatoError(f"runtime_parameters: not JSON: {exc}") from None
        instance = TemplateDAGInstance(self, id, params, run_id_of(id))
        if placement.get("submit_task"):
            from legato.compat.dagger.service import Dagger

            await Dagger.running().submit(instance)
        return instance


ITemplateDAG = TemplateDAG


class DefaultTemplateBuilder:
    def __init__(self, app: Any = None) -> None:
        self._name: str | None = None
        self._root: ProcessTemplate | None = None
        self._type: Any = None

    def set_name(self, name: str) -> DefaultTemplateBuilder:
        self._name = name
        return self

    def set_type(self, template_type: Any) -> DefaultTemplateBuilder:
        self._type = template_type
        return self

    def set_root(self, template: ProcessTemplate) -> DefaultTemplateBuilder:
        if not isinstance(template, ProcessTemplate):
            raise LegatoError(
                "set_root: give a process template, the result of a builder's build()"
            )
        self._root = template
        return self

    def build(self) -> TemplateDAG:
        if not self._name:
            raise LegatoError("DefaultTemplateBuilder: set_name was not called")
        if self._root is None:
            raise LegatoError("DefaultTemplateBuilder: set_root was not called")
        return TemplateDAG(self._name, self._root, self._type)


class ProcessTemplateDagBuilder:
    def __init__(self, app: Any = None) -> None:
        self._name: str | None = None
        self._root: TaskTemplate | None = None
        self._next: list[ProcessTemplate] = []
        self._type: Any = None

    def set_name(self, name: str) -> ProcessTemplateDagBuilder:
        self._name = name
        return self

    def set_root_task(self, task: TaskTemplate) -> ProcessTemplateDagBuilder:
        if not isinstance(task, TaskTemplate):
            raise LegatoError("set_root_task: give a task template, the result of build()")
        self._root = task
        return self

    def set_next_process(self, task: ProcessTemplate) -> ProcessTemplateDagBuilder:
        if not isinstance(task, ProcessTemplate):
            raise LegatoError("set_next_process: give a process template, the result of build()")
        self._next.append(task)
        return self

    def set_type(self, process_type: Any) -> ProcessTemplateDagBuilder:
        self._type = process_type
        return self

    def set_max_run_duration(self, seconds: float) -> ProcessTemplateDagBuilder:
        return self

    def build(self) -> ProcessTemplate:
        if not self._name:
            raise LegatoError("ProcessTemplateDagBuilder: set_name was not called")
        return ProcessTemplate(self._name, self._root, list(self._next), self._type)


class ParallelCompositeProcessTemplateDagBuilder(ProcessTemplateDagBuilder):
    """Processes that run at once; the next process waits for all of them (JOIN_ALL) or one."""

    def __init__(self, app: Any = None) -> None:
        super().__init__(app)
        self._parallel: list[ProcessTemplate] = []
        self._operator = TaskOperator.JOIN_ALL

    def set_parallel_process_templates(
        self, template: ProcessTemplate
    ) -> ParallelCompositeProcessTemplateDagBuilder:
        self._parallel.append(template)
        return self

    def set_parallel_operator_type(
        self, operator_type: TaskOperator
    ) -> ParallelCompositeProcessTemplateDagBuilder:
        self._operator = operator_type
        return self

    def set_root_task(self, task: TaskTemplate) -> ProcessTemplateDagBuilder:
        raise LegatoError(
            "ParallelCompositeProcessTemplateDagBuilder: set_root_task: use "
            "set_parallel_process_templates"
        )

    def build(self) -> ProcessTemplate:
        if not self._parallel:
            raise LegatoError("set_parallel_process_templates was not called")
        built = super().build()
        built.parallel = list(self._parallel)
        built.operator = self._operator
        return built
