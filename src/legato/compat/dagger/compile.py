"""A Dagger template as one Legato workflow.

Each task becomes one or two steps, named after the task (its `set_name`, else its topic, else its
class): a command task an `emit` to its topic (after a Python step when the class has its own
`execute`), a listener task a `listen` for its topic's messages keyed by the runtime parameter its
class names in `correlatable_key`, a decision a Python step and a `branch`, a trigger a `wait` until
the time in a runtime parameter, an interval task a Python step that checks until done, a parallel
group children that depend on the same step and a join whose trigger is `all_succeeded`
(JOIN_ALL) or `one_succeeded` (ATLEAST_ONE). The runtime parameters are the run's input.
"""

from __future__ import annotations

import re
from typing import Any

from legato.compat.dagger import tasks
from legato.compat.dagger.tasks import TaskOperator, class_path, overrides
from legato.compat.dagger.templates import ProcessTemplate, TaskTemplate
from legato.errors import LegatoError
from legato.model.build import build_workflow
from legato.model.workflow import Workflow

TRANSPORT = "dagger"  # the transport name emit steps use: legato serve --transport dagger=URL
RUN_TASK = "legato.compat.dagger.tasks:run_task"
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def _quote(key: str) -> str:
    return "{{ input[" + repr(key) + "] }}"


class Compiler:
    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}
        self.listeners: dict[str, list[type]] = {}  # topic -> listener classes
        self.required: dict[str, str] = {}  # runtime parameter -> what needs it

    def _name(self, wanted: str) -> str:
        base = _NOT_NAME.sub("_", wanted)[:100] or "task"
        if not (base[0].isalpha() or base[0] == "_"):
            base = "t_" + base
        name, n = base, 1
        while name in self.steps:
            n += 1
            name = f"{base}_{n}"
        self.steps[name] = {}  # reserved
        return name

    def _add(self, name: str, body: dict[str, Any], after: list[str], trigger: str | None) -> str:
        if after:
            body["depends_on"] = list(after)
            if trigger:
                body["trigger"] = trigger
            elif len(after) > 1:
                body["trigger"] = "none_failed"  # paths that met again: whichever ran
        self.steps[name] = body
        return name

    def _python(
        self, t: TaskTemplate, name: str, method: str, nexts: list[str] | None = None, **args: Any
    ) -> dict[str, Any]:
        call: dict[str, Any] = {
            "task": class_path(t.type),
            "method": method,
            "name": name,
            "runtime_parameters": "{{ input }}",
            "run_id": "{{ run.id }}",
            **args,
        }
        if t.topic:
            call["topic"] = t.topic
        if nexts:
            call["next_dags"] = nexts
        return {"python": {"function": RUN_TASK, "args": call}}

    def task(
        self, t: TaskTemplate, after: list[str], trigger: str | None, name: str | None = None
    ) -> tuple[list[str], str | None]:
        """Add the steps of `t` and of what follows it; return the steps the next one waits for,
        and the trigger it waits with. `name`: one reserved for it (a decision's target)."""
        name = name or self._name(_wanted(t))
        if t.kind == "decision":
            return self._decision(t, name, after, trigger), None
        last, join = self._one(t, name, after, trigger)
        if not t.next:
            return last, join
        exits = []
        for n in t.next:
            exits += self.task(n, last, join)[0]
        return exits, None

    def _decision(
        self, t: TaskTemplate, name: str, after: list[str], trigger: str | None
    ) -> list[str]:
        """A Python step returning the name of the next task, and a branch to that task's first
        steps (a parallel group has several); the other tasks are skipped."""
        targets = [self._name(_wanted(n)) for n in t.next]  # the names evaluate() returns
        self._add(name, self._python(t, name, "evaluate", targets), after, trigger)
        decide = self._name(name + "_branch")
        cases: list[dict[str, Any]] = []
        exits: list[str] = []
        seen: set[str] = set()
        for n, target in zip(t.next, targets, strict=True):
            exits += self.task(n, [decide], None, target)[0]
            entries = [
                step
                for step, body in self.steps.items()
                if decide in body.get("depends_on", ()) and step not in seen
            ]
            seen.update(entries)
            when = "{{ steps." + name + ".output == " + repr(target) + " }}"
            cases.append({"when": when, "then": entries})
        self._add(decide, {"branch": {"cases": cases}}, [name], None)
        return exits

    def _one(
        self, t: TaskTemplate, name: str, after: list[str], trigger: str | None
    ) -> tuple[list[str], str | None]:
        timeout = {"timeout": t.timeout} if t.timeout else {}
        if t.kind == "command":
            if overrides(t.type, "execute"):
                prep = self._add(
                    self._name(name + "_execute"), self._python(t, name, "execute"), after, trigger
                )
                out = "steps." + prep + ".output"
                emit: dict[str, Any] = {
                    "to": "{{ " + out + ".topic }}",
                    "message": "{{ " + out + ".message }}",
                }
                after, trigger = [prep], None
            else:
                emit = {"to": t.topic, "message": "{{ input }}"}
            body = {"emit": {"transport": TRANSPORT, **emit}, **timeout}
            return [self._add(name, body, after, trigger)], None
        if t.kind == "listener":
            assert t.topic is not None and issubclass(t.type, tasks.KafkaListenerTask)
            self.listeners.setdefault(t.topic, [])
            if t.type not in self.listeners[t.topic]:
                self.listeners[t.topic].append(t.type)
            wanted = str(t.type.correlatable_key)
            self.required.setdefault(wanted, f"{t.type.__name__}.correlatable_key")
            key = _quote(wanted)
            body = {"listen": {"event": t.topic, "key": key}, **timeout}
            step = self._add(name, body, after, trigger)
            if not overrides(t.type, "on_message"):
                return [step], None
            check = self._python(t, name, "on_message", message="{{ steps." + step + ".output }}")
            return [self._add(self._name(name + "_on_message"), check, [step], None)], None
        if t.kind in ("trigger", "interval") and t.time_key:
            self.required.setdefault(t.time_key, f"{name}: set_time_to_execute_lookup_key")
            wait = {"wait": {"until": _quote(t.time_key)}}
            after, trigger = [self._add(self._name(name + "_at"), wait, after, trigger)], None
        if t.kind == "interval":
            body = self._python(
                t, name, "interval_execute", interval=t.interval_key, until=t.until_key
            )
            return [self._add(name, {**body, **timeout}, after, trigger)], None
        if t.kind == "parallel":
            optional = t.operator == TaskOperator.ATLEAST_ONE
            exits: list[str] = []
            for child in t.children:
                first = len(self.steps)
                exits += self.task(child, after, trigger)[0]
                if optional:  # a child that fails does not fail the run once one succeeded
                    for step in list(self.steps)[first:]:
                        self.steps[step]["optional"] = True
            join = "one_succeeded" if optional else "all_succeeded"
            return exits, join
        if t.kind == "trigger" and not overrides(t.type, "execute"):
            return after, trigger
        body = self._python(t, name, "execute")
        return [self._add(name, {**body, **timeout}, after, trigger)], None

    def process(
        self, p: ProcessTemplate, after: list[str], trigger: str | None
    ) -> tuple[list[str], str | None]:
        if p.parallel:
            exits: list[str] = []
            for child in p.parallel:
                exits += self.process(child, after, trigger)[0]
            join = "one_succeeded" if p.operator == TaskOperator.ATLEAST_ONE else "all_succeeded"
            result: tuple[list[str], str | None] = (exits, join)
        elif p.root is None:
            raise LegatoError(f"process {p.name!r}: set_root_task was not called")
        else:
            result = self.task(p.root, after, trigger)
        for n in p.next:
            result = self.process(n, *result)
        return result


def _wanted(t: TaskTemplate) -> str:
    """A task's step name: its set_name, else its topic, else its class's name."""
    return t.name or t.topic or t.type.__name__


def compile_template(
    name: str, root: ProcessTemplate
) -> tuple[Workflow, dict[str, list[type]], dict[str, str]]:
    """The workflow of a template, the listener classes of each topic it listens to, and the
    runtime parameters its tasks cannot do without."""
    compiler = Compiler()
    compiler.process(root, [], None)
    spec = {
        "name": name,
        "description": f"Dagger template {name}",
        # A parallel group or a trigger without execute reserved a name it did not use.
        "steps": {name: body for name, body in compiler.steps.items() if body},
    }
    wf = build_workflow(spec, functions={RUN_TASK: tasks.run_task})
    return wf, compiler.listeners, compiler.required
