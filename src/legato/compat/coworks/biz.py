"""`@biz`: CoWorks' name for Airflow's `@dag`. Calling the decorated function (`first = first()`)
declares its tasks and returns the Legato Workflow, named after the function (or `dag_id`).

Airflow's DAG arguments map onto the workflow's own fields: `schedule_interval` (or `schedule`:
None, a preset such as '@daily', a cron expression or a timedelta), `start_date`, `end_date`,
`catchup`, `tags`, `max_active_runs`, `dagrun_timeout`, `params` and `default_args` (retries,
retry_delay, retry_exponential_backoff, max_retry_delay, execution_timeout and the email keys).
Templates see Airflow's names (`dag_run.conf`, `ti.xcom_pull`, `params`, `ds`...), rendered as
text unless `render_template_as_native_obj=True`. The function's own parameters are DAG params:
each stands for `{{ params.<name> }}`, its default (or the value given at the call) overridden by
the run's conf.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, overload

from legato import dsl
from legato.compat.coworks.nodes import Dag, Native, _dag, refuse
from legato.errors import DefinitionError, Problem
from legato.model.workflow import Workflow

_UNSET: Any = object()
IGNORED_DAG_ARGS = (
    "is_paused_upon_creation",
    "default_view",
    "orientation",
    "max_active_tasks",
    "concurrency",
    "owner_links",
    "access_control",
    "doc_md",
    "jinja_environment_kwargs",
    "auto_register",
)


def _seconds(value: Any, key: str) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise refuse(f"default_args.{key}", "must be a timedelta (or seconds)")


def translate_default_args(default_args: dict[str, Any]) -> dict[str, Any]:
    """Airflow's default_args as Legato's `default_args`; an unknown key is refused by name."""
    if not isinstance(default_args, dict):
        raise refuse("default_args", "must be a mapping")
    out: dict[str, Any] = {"retry_backoff": 1.0, "retry_jitter": False}  # Airflow's fixed delay
    for key, value in default_args.items():
        if key == "retries":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise refuse("default_args.retries", "must be a whole number, 0 or more")
            out["retries"] = value
        elif key == "retry_delay":
            out["retry_delay"] = _seconds(value, key)
        elif key == "retry_exponential_backoff":
            out["retry_backoff"] = 2.0 if value else 1.0
        elif key == "max_retry_delay":
            out["retry_max_delay"] = _seconds(value, key)
        elif key == "execution_timeout":
            out["timeout"] = _seconds(value, key)
        elif key in ("email", "email_on_failure", "email_on_retry"):
            out[key] = value
        elif key == "depends_on_past":
            if value:
                raise refuse("default_args.depends_on_past", "True is not supported by Legato")
        elif key not in ("owner", "start_date", "end_date", "pool", "queue", "priority_weight"):
            raise refuse(
                f"default_args.{key}",
                "is not a default_args key Legato knows (retries, retry_delay, "
                "retry_exponential_backoff, max_retry_delay, execution_timeout, email, "
                "email_on_failure, email_on_retry, owner, depends_on_past)",
            )
    if not out.get("email"):  # Airflow ignores email_on_* without addresses
        for key in ("email", "email_on_failure", "email_on_retry"):
            out.pop(key, None)
    else:  # Airflow's defaults: mail on failure and on retry
        out.setdefault("email_on_failure", True)
        out.setdefault("email_on_retry", True)
    return out


# Legato's names of the workflow fields a @biz sets, in problems, as the @biz argument's name.
AIRFLOW_NAMES = {
    "schedule": "schedule_interval",
    "timeout": "dagrun_timeout",
    "default_args.retry_max_delay": "default_args.max_retry_delay",
    "default_args.retry_backoff": "default_args.retry_exponential_backoff",
}


def _airflow_names(exc: DefinitionError) -> DefinitionError:
    problems = []
    for problem in exc.problems:
        head, dot, rest = problem.path.partition(".")
        path = AIRFLOW_NAMES.get(problem.path) or (
            AIRFLOW_NAMES[head] + dot + rest if head in AIRFLOW_NAMES else problem.path
        )
        problems.append(Problem(path, problem.message))
    return DefinitionError(problems, "CoWorks definition")


def _schedule(schedule_interval: Any, schedule: Any) -> Any:
    if schedule_interval is not _UNSET and schedule is not _UNSET:
        raise refuse("schedule_interval", "give schedule_interval or schedule, not both")
    value = schedule_interval if schedule_interval is not _UNSET else schedule
    if value is _UNSET:
        return _UNSET
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        if value == "@once":
            raise refuse("schedule_interval", "'@once' is not supported: start the run by hand")
        return value
    raise refuse("schedule_interval", "must be None, a preset, a cron expression or a timedelta")


@overload
def biz(dag_id: Callable[..., Any]) -> Callable[..., Workflow]: ...


@overload
def biz(
    dag_id: str | None = None,
    description: str | None = None,
    schedule_interval: Any = _UNSET,
    schedule: Any = _UNSET,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    catchup: bool | None = None,
    default_args: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    params: dict[str, Any] | None = None,
    render_template_as_native_obj: bool = False,
    max_active_runs: int | None = None,
    dagrun_timeout: timedelta | None = None,
    **dag_args: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Workflow]]: ...


def biz(
    dag_id: str | Callable[..., Any] | None = None,
    description: str | None = None,
    schedule_interval: Any = _UNSET,
    schedule: Any = _UNSET,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    catchup: bool | None = None,
    default_args: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    params: dict[str, Any] | None = None,
    render_template_as_native_obj: bool = False,
    max_active_runs: int | None = None,
    dagrun_timeout: timedelta | None = None,
    **dag_args: Any,
) -> Callable[..., Workflow] | Callable[[Callable[..., Any]], Callable[..., Workflow]]:
    """Airflow's `@dag`, CoWorks' `@biz` (see the module's docstring); `@biz` alone works too."""
    if callable(dag_id):  # used bare: `@biz` over the function
        return biz()(dag_id)
    for key in dag_args:
        if key not in IGNORED_DAG_ARGS:
            raise refuse(key, "is not a @biz (Airflow DAG) argument Legato knows")
    when = _schedule(schedule_interval, schedule)
    if params is not None and not isinstance(params, dict):
        raise refuse("params", "must be a mapping of name to default value")
    defaults = dict(default_args or {})
    start = start_date or defaults.get("start_date")
    end = end_date or defaults.get("end_date")
    if when is _UNSET or when is None:  # started runs only: the calendar fields mean nothing
        start = end = None
        catchup_value = None
    else:
        catchup_value = catchup
    translated = translate_default_args(defaults) if default_args is not None else None
    if when is not _UNSET and when is not None and start is None:
        raise refuse("start_date", "a scheduled biz needs a start_date (as in Airflow)")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Workflow]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def declare(*args: Any, **kwargs: Any) -> Workflow:
            try:
                bound = signature.bind_partial(*args, **kwargs)
            except TypeError as exc:
                raise refuse(fn.__name__, f"bad arguments: {exc}") from None
            dag_params = dict(params or {})
            named = [
                n
                for n, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            for name in named:
                p = signature.parameters[name]
                given = bound.arguments.get(name, p.default)
                dag_params[name] = None if given is inspect.Parameter.empty else given
            dag = Dag(native=bool(render_template_as_native_obj))

            def body() -> None:
                token = _dag.set(dag)
                try:
                    fn(**{n: Native(f"{{{{ params[{n!r}] }}}}") for n in named})
                    for check in [*dag.finish, *dag.last]:
                        check()
                finally:
                    _dag.reset(token)

            body.__doc__ = fn.__doc__
            try:
                return dsl.workflow(
                    body,
                    name=dag_id if isinstance(dag_id, str) else fn.__name__,
                    description=description,
                    schedule_interval=dsl._seconds(when) if when is not _UNSET else None,
                    start_date=start,
                    end_date=end,
                    catchup=catchup_value,
                    tags=tags,
                    max_active_runs=max_active_runs,
                    timeout=dagrun_timeout,
                    default_args=translated,
                    airflow={"params": dag_params},
                )
            except DefinitionError as exc:
                raise _airflow_names(exc) from None

        return declare

    return decorate
