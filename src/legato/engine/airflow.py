"""Airflow's template names, for workflows that ask for them (`airflow:` in the definition).

DAG files written for Airflow (CoWorks' among them) read `{{ dag_run.conf['x'] }}`,
`{{ ti.xcom_pull(task_ids='t') }}`, `{{ params.x }}` or `{{ ds }}`. Rather than rewrite their
templates, such a workflow's templates see these names next to Legato's own (`input`, `steps`, `run`),
all computed from the run's state: nothing here does I/O, so the decider stays pure. The same
`TaskInstance` serves `get_current_context()` inside a Python task (legato.compat.coworks).

XCom is Legato's step output, read the Airflow way: an HTTP step's `return_value` is its body (`{}`
when empty) and `status_code` its status; any other step's `return_value` is its output, and another
key a field of it (as Airflow's `multiple_outputs`). A task id may hold dots and dashes, which step
names cannot: `group.read` is the step `group__read`, `my-task` is `my_task`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from legato.sandbox import LIMITS


class XComTooLarge(ValueError):
    """A task pulled a result too large to travel in its context (see `context_steps`)."""


def step_name(task_id: str) -> str:
    """The Legato step name of an Airflow task id."""
    return task_id.replace(".", "__").replace("-", "_")


def xcom_value(kind: str, state: Any, key: str | None) -> Any:
    """What Airflow's `xcom_pull` gives for a step of `kind` ("http" for a call answered at once,
    anything else otherwise) in `state` ({status, output, error}), None when it has none."""
    if not isinstance(state, Mapping) or state.get("status") != "succeeded":
        return None
    output = state.get("output")
    key = key or "return_value"
    if kind == "http" and isinstance(output, Mapping):
        if key == "status_code":
            return output.get("status")
        if key == "return_value":
            body = output.get("body")
            return {} if body in (None, "") else body
        if key == "headers":
            return output.get("headers")
        return None
    if key == "return_value":
        return output
    return output.get(key) if isinstance(output, Mapping) else None


class TaskInstance:
    """The `ti` of a template or a Python task: reads earlier steps' results (never writes)."""

    def __init__(
        self,
        steps: Mapping[str, Any],
        kinds: Mapping[str, str],
        dag_id: str,
        run_id: str,
        task_id: str | None = None,
    ) -> None:
        self._steps = steps
        self._kinds = kinds
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_id = task_id

    def xcom_pull(
        self,
        task_ids: str | Sequence[str] | None = None,
        key: str | None = "return_value",
        dag_id: str | None = None,
        include_prior_dates: bool = False,
        default: Any = None,
        **_ignored: Any,
    ) -> Any:
        """One task id gives its value, a list of them a list of values; a task that did not
        succeed (or does not exist) gives `default`."""
        if task_ids is None:
            return default
        if isinstance(task_ids, str):
            return self._one(task_ids, key, default)
        return [self._one(t, key, default) for t in task_ids]

    def context_steps(self, names: Sequence[str]) -> dict[str, Any]:
        """The results of the steps `names` (a task's upstream) a Python task may read, rendered
        into its arguments. Only those: the others' may be big, and whether they have finished
        depends on timing. The results, smallest first, fill at most half of what a rendered
        request may hold; a larger one is only marked with its size, so a task pulling it fails
        naming it, and a task that pulls nothing is not held to its neighbours' sizes."""
        budget = LIMITS.max_size // 2
        sized: list[tuple[int, str, Any]] = []
        for name in names:
            state = self._steps.get(name)
            if not isinstance(state, Mapping) or state.get("status") != "succeeded":
                continue
            output = state.get("output")
            try:
                size = len(orjson.dumps(output))
            except TypeError:
                size = budget + 1
            sized.append((size, name, output))
        out: dict[str, Any] = {}
        for size, name, output in sorted(sized, key=lambda item: (item[0], item[1])):
            if size <= budget:
                out[name] = {"status": "succeeded", "output": output}
                budget -= size
            else:
                out[name] = {"status": "succeeded", "too_large": size}
        return out

    def _one(self, task_id: str, key: str | None, default: Any) -> Any:
        name = step_name(task_id)
        state = self._steps.get(name)
        if isinstance(state, Mapping) and "too_large" in state:
            raise XComTooLarge(
                f"xcom_pull(task_ids={task_id!r}): its result is {state['too_large']} bytes, too "
                "large for a task's context; pass it to the task as an argument instead"
            )
        value = xcom_value(self._kinds.get(name, ""), self._steps.get(name), key)
        return default if value is None else value

    def xcom_push(self, key: str, value: Any, **_: Any) -> None:
        raise NotImplementedError(
            "xcom_push is not supported: a task's result is its return value, which later tasks "
            "pull (return a mapping to give several values, read with xcom_pull(key=...))"
        )

    def __repr__(self) -> str:
        return f"<TaskInstance {self.dag_id}.{self.task_id} run {self.run_id}>"


def conf_of(run_input: Mapping[str, Any]) -> dict[str, Any]:
    """`dag_run.conf`: the run's input, less the interval a scheduled run carries."""
    conf = dict(run_input)
    schedule = conf.get("schedule")
    if isinstance(schedule, Mapping) and "logical_date" in schedule:
        del conf["schedule"]
    return conf


def dates(run_input: Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """`ds`, `ts` and friends: a scheduled run's interval, else the moment the run was created."""
    schedule = run_input.get("schedule")
    if isinstance(schedule, Mapping) and "logical_date" in schedule:
        start = str(schedule["interval_start"])
        end = str(schedule["interval_end"])
        logical = str(schedule["logical_date"])
    else:
        logical = datetime.fromtimestamp(created_at, UTC).isoformat()
        start = end = logical
    moment = datetime.fromisoformat(logical.replace("Z", "+00:00"))
    ts = moment.isoformat()
    return {
        "ds": moment.strftime("%Y-%m-%d"),
        "ds_nodash": moment.strftime("%Y%m%d"),
        "ts": ts,
        "ts_nodash": moment.strftime("%Y%m%dT%H%M%S"),
        "logical_date": ts,
        "execution_date": ts,
        "data_interval_start": start,
        "data_interval_end": end,
    }


def run_names(
    params: Mapping[str, Any],
    run: Mapping[str, Any],
    run_input: Mapping[str, Any],
    created_at: float,
) -> dict[str, Any]:
    """The names that depend on the run alone (not on its steps): computed once per decision."""
    conf = conf_of(run_input)
    when = dates(run_input, created_at)
    dag_id, run_id = str(run["workflow"]), str(run["id"])
    return {
        **when,
        "dag_run": {"conf": conf, "run_id": run_id, "dag_id": dag_id, **when},
        "dag": {"dag_id": dag_id},
        "run_id": run_id,
        "params": {**params, **conf},
    }


def airflow_names(
    params: Mapping[str, Any],
    run: Mapping[str, Any],
    run_input: Mapping[str, Any],
    created_at: float,
    steps: Mapping[str, Any],
    kinds: Mapping[str, str],
) -> dict[str, Any]:
    """The names a template of an Airflow workflow sees besides Legato's; `run` is {id, workflow}."""
    names = run_names(params, run, run_input, created_at)
    names["ti"] = TaskInstance(steps, kinds, str(run["workflow"]), str(run["id"]))
    return names
