"""CoWorks' operators as Legato steps.

`TechMicroServiceOperator` is one HTTP step: `cws_name` names a service of the directory (Legato's
own, or a CoWorks directory service given with `--directory-url`), `api_id`/`stage`/`token` an API
Gateway URL (see settings). Its templated fields are Legato templates that also see Airflow's
names (`dag_run`, `ti`, `params`, `ds`...). As CoWorks, a 5xx answer fails it, a 4xx too unless
`raise_400_errors=False`; as Airflow, any such failure is retried up to `retries`. With
`asynchronous=True` the service is told where to leave its result (`X-CWS-S3Bucket`, `X-CWS-S3Key`,
`InvocationType: Event`) and the step waits for that object.

`BranchTechMicroServiceOperator` is a branch step over the called step's status, in CoWorks' order:
`on_failure` (>= 400), `on_no_content` (204), `on_check` when `response_check(result)` holds, else
`on_success`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from legato import dsl
from legato.compat.coworks.nodes import (
    Native,
    Node,
    as_text,
    checked_task_id,
    current_dag,
    refuse,
    step_options,
    task_names,
)
from legato.compat.coworks.settings import SETTINGS
from legato.compat.coworks.taskflow import python_step
from legato.dsl import StepNode
from legato.engine.airflow import step_name
from legato.model.build import METHODS
from legato.model.service import SERVICE_NAME

# Airflow retries a failed task whatever failed it, up to `retries`: a call is retried on any
# failure of the call itself (a 4xx only when it is one, that is with raise_400_errors=True).
CALL_RETRY_ON = ["network", "timeout", "5xx", "429", "status", "callback"]
DEFAULT_ASYNC_TIMEOUT = 900.0


def _has_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class TechMicroServiceOperator(Node):
    """Calls a TechMicroService (see the module's docstring)."""

    def __init__(
        self,
        *positional: Any,
        task_id: str | None = None,
        cws_name: str | None = None,
        entry: str = "/",
        method: str = "get",
        no_auth: bool = False,
        query_params: dict[str, Any] | str | None = None,
        json: Any = None,
        data: dict[str, Any] | str | None = None,
        stage: str | None = None,
        api_id: str | None = None,
        token: str | None = None,
        directory_conn_id: str = "coworks_directory",
        asynchronous: bool = False,
        xcom_push: bool = True,
        json_result: bool = True,
        raise_400_errors: bool = True,
        accept: str = "application/json",
        headers: dict[str, str] | None = None,
        log_response: bool = False,
        poke_interval: float | None = None,
        **operator_args: Any,
    ) -> None:
        _keywords_only("TechMicroServiceOperator", positional, task_id)
        dag = current_dag("TechMicroServiceOperator")
        name = checked_task_id(task_id, "TechMicroServiceOperator", dag)
        assert task_id is not None
        self.task_id = task_id
        self.cws_name = cws_name
        self.asynchronous = asynchronous
        native = dag.native
        upstream: list[Node] = []
        query_params, json, data = (_xcom(v, upstream) for v in (query_params, json, data))
        call: dict[str, Any] = {}
        if cws_name is not None:
            if not isinstance(cws_name, str) or _has_template(cws_name):
                raise refuse(
                    "cws_name", "must be a service name (Legato fixes it at registration)", task_id
                )
            if not SERVICE_NAME.fullmatch(cws_name):
                raise refuse("cws_name", f"{cws_name!r} is not a service name", task_id)
            call["service"] = cws_name
        elif not api_id:
            raise refuse(
                "cws_name",
                "is required, or api_id (with stage and token) to call the API Gateway",
                task_id,
            )
        else:
            if not isinstance(api_id, str) or _has_template(api_id):
                raise refuse("api_id", "must be an API Gateway id", task_id)
            if not no_auth and not token:
                raise refuse("token", "is required with api_id (or no_auth=True)", task_id)
            call["url"] = SETTINGS.url(api_id, str(stage or "dev"))
        if not isinstance(entry, str):
            raise refuse("entry", "must be a route such as '/invoice'", task_id)
        call["path"] = "/" + entry.lstrip("/")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise refuse("method", f"must be one of {', '.join(METHODS)}", task_id)
        call["method"] = method.upper()
        if not isinstance(asynchronous, bool):
            raise refuse("asynchronous", "must be True or False", task_id)
        sent = {"Content-Type": "application/json", "Accept": accept}
        if headers is not None:
            if not isinstance(headers, dict):
                raise refuse("headers", "must be a mapping of header to value", task_id)
            sent.update(headers)
        if token and not no_auth and cws_name is None:
            sent["Authorization"] = token
        if json is not None and data is not None:
            raise refuse("data", "cannot be given with json", task_id)
        if data is not None and call["method"] == "GET":  # the seed: `data` is GET's parameters
            if query_params is not None:
                raise refuse(
                    "data", "with method GET, give data or query_params, not both", task_id
                )
            query_params, query_field = data, "data"
            data = None
        else:
            query_field = "query_params"
        if query_params is not None:
            call["query"] = _query(query_params, query_field, native, task_id)
        if json is not None:
            call["json"] = as_text(json) if not native else _plain(json)
        elif data is not None:
            call["body"] = _body(data, task_id)
        retry_on = CALL_RETRY_ON + (["4xx"] if raise_400_errors else [])
        options = step_options(operator_args, task_id, retry_on)
        call["success"] = ["1xx", "2xx", "3xx"] + ([] if raise_400_errors else ["4xx"])
        call["follow_redirects"] = True  # as `requests` does
        if asynchronous:
            sent["InvocationType"] = "Event"
            call["poll"] = {
                "every": poke_interval or SETTINGS.every(),
                "s3": {
                    "bucket": SETTINGS.result_bucket(),
                    "bucket_header": "X-CWS-S3Bucket",
                    "key_header": "X-CWS-S3Key",
                },
            }
            options.setdefault("timeout", DEFAULT_ASYNC_TIMEOUT)
        call["headers"] = sent
        self.node = dsl.http(name, **call, **options)
        for node in upstream:
            self.node.after(*node.tails())
        self.register(dag)

    def heads(self) -> list[StepNode]:
        return [self.node]

    def tails(self) -> list[StepNode]:
        return [self.node]


def _keywords_only(what: str, positional: tuple[Any, ...], task_id: str | None) -> None:
    if positional:
        raise refuse(
            "task_id",
            f"{what} takes keyword arguments only: {what}(task_id=..., ...), "
            f"not {positional[0]!r} by position",
            task_id,
        )


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Native) else value


def _xcom(value: Any, upstream: list[Node]) -> Any:
    """Another task given as a value (Airflow's XComArg): its result, and a dependency on it."""
    if isinstance(value, Node):
        upstream.append(value)
        return Native(f"{{{{ ti.xcom_pull(task_ids={value.task_id!r}) }}}}")
    return value


def _query(value: Any, field_name: str, native: bool, task_id: str) -> Any:
    """The query: a mapping (its templates rendered to text), or one template of a mapping, which
    keeps its value even without `render_template_as_native_obj` (a query is a mapping)."""
    if isinstance(value, str):
        if not _has_template(value):
            raise refuse(field_name, "must be a mapping (or a template of one)", task_id)
        return str(value)
    if not isinstance(value, dict):
        raise refuse(field_name, "must be a mapping (or a template of one)", task_id)
    return as_text(value) if not native else _plain(value)


def _body(data: Any, task_id: str) -> str:
    """`data` as the body: text as is, a mapping of plain values form-encoded (as `requests`)."""
    if isinstance(data, str):
        return data
    if isinstance(data, dict) and not any(_has_template(v) for v in data.values()):
        return urlencode(data)
    raise refuse("data", "must be text, or a mapping without templates (else use json)", task_id)


class BranchTechMicroServiceOperator(Node):
    """Chooses the next tasks from a TechMicroServiceOperator's answer (see the module)."""

    def __init__(
        self,
        *positional: Any,
        task_id: str | None = None,
        cws_task_id: str | None = None,
        on_success: str | list[str] | None = None,
        on_failure: str | list[str] | None = None,
        on_no_content: str | list[str] | None = None,
        response_check: Callable[..., bool] | None = None,
        on_check: str | list[str] | None = None,
        **operator_args: Any,
    ) -> None:
        _keywords_only("BranchTechMicroServiceOperator", positional, task_id)
        dag = current_dag("BranchTechMicroServiceOperator")
        name = checked_task_id(task_id, "BranchTechMicroServiceOperator", dag)
        assert task_id is not None
        self.task_id = task_id
        if not isinstance(cws_task_id, str) or not cws_task_id:
            raise refuse("cws_task_id", "is required: the task id of the call to test", task_id)
        if not any((on_success, on_failure, on_no_content, on_check, response_check)):
            raise refuse(
                "on_success",
                "a branch needs at least one of on_success, on_failure, on_no_content, on_check",
                task_id,
            )
        status = f"steps.{step_name(cws_task_id)}.output.status"
        cases: list[tuple[str, list[str]]] = []
        if on_failure:
            cases.append(
                (f"{{{{ {status} >= 400 }}}}", task_names(on_failure, "on_failure", task_id))
            )
        if on_no_content:
            cases.append(
                (f"{{{{ {status} == 204 }}}}", task_names(on_no_content, "on_no_content", task_id))
            )
        check: StepNode | None = None
        if response_check is not None or on_check:
            if not callable(response_check) or not on_check:
                raise refuse(
                    "on_check" if callable(response_check) else "response_check",
                    "response_check (a function of the result) and on_check (the tasks to run "
                    "when it holds) go together",
                    task_id,
                )
            check = python_step(
                dag,
                f"{task_id}__check",
                _checker(response_check),
                kwargs={
                    "result": f"{{{{ ti.xcom_pull(task_ids={cws_task_id!r}) }}}}",
                    "status": f"{{{{ {status} }}}}",
                    "skip": [400 if on_failure else 600, 204 if on_no_content else 0],
                },
                retry_on=["timeout"],
            )
            cases.append(
                (f"{{{{ steps.{check.name}.output }}}}", task_names(on_check, "on_check", task_id))
            )
        otherwise = task_names(on_success, "on_success", task_id) if on_success else []
        options = step_options(operator_args, task_id, CALL_RETRY_ON)
        options.pop("retry")
        self.check = check
        self.node = dsl.branch(name, cases, otherwise, **options)
        self.register(dag)
        self._targets = [
            (field_name, task_names(value, field_name, task_id))
            for field_name, value in (
                ("on_failure", on_failure),
                ("on_no_content", on_no_content),
                ("on_check", on_check),
                ("on_success", on_success),
            )
            if value
        ]
        dag.finish.append(lambda: self._check_targets(dag.tasks, cws_task_id))
        dag.last.append(self._skip_the_others)

    def heads(self) -> list[StepNode]:
        return [self.node]

    def tails(self) -> list[StepNode]:
        return [self.node]

    def _check_targets(self, tasks: dict[str, Node], cws_task_id: str) -> None:
        called = tasks.get(cws_task_id)
        if not isinstance(called, TechMicroServiceOperator) or called.asynchronous:
            raise refuse(
                "cws_task_id",
                f"{cws_task_id!r} is not a (synchronous) TechMicroServiceOperator of this biz",
                self.task_id,
            )
        known = {step_name(t) for t in tasks}
        own = {step_name(self.task_id), step_name(cws_task_id)}
        for field_name, names in self._targets:
            if own & set(names):
                raise refuse(
                    field_name, "cannot name the branch or the call it tests", self.task_id
                )
            unknown = [n for n in names if n not in known]
            if unknown:
                raise refuse(field_name, f"names no task of this biz: {unknown[0]!r}", self.task_id)
        first = self.check or self.node
        first.after(*called.tails())  # it reads the call's answer, whatever `>>` said
        if self.check is not None:
            self.node.after(self.check.name)

    def _skip_the_others(self) -> None:
        """As Airflow's branch operators: a task right after the branch that no field names is
        skipped whatever the answer (a case that never holds names it)."""
        builder = dsl._builder.get()
        named = {n for _, names in self._targets for n in names}
        others = [
            node.name
            for node in (builder.nodes.values() if builder is not None else ())
            if self.node.name in node.depends_on and node.name not in named
        ]
        if others:
            self.node.body["branch"]["cases"].append({"when": "{{ false }}", "then": others})


def _checker(response_check: Callable[..., bool]) -> Callable[..., bool]:
    """`response_check` as a step: not asked when an earlier case (failure, no content) wins."""

    def check(result: Any = None, status: int = 200, skip: tuple[int, int] = (600, 0)) -> bool:
        if status >= skip[0] or status == skip[1]:
            return False
        return bool(response_check(result))

    origin: Any = response_check
    while isinstance(origin, functools.partial):
        origin = origin.func
    if not hasattr(origin, "__qualname__"):  # a callable object: named after its class
        origin = type(origin)
    check.__module__ = str(getattr(origin, "__module__", None) or __name__)
    check.__qualname__ = f"{origin.__qualname__}.<check>"  # registered, never imported
    check.__name__ = str(getattr(origin, "__name__", None) or "check")
    return check
