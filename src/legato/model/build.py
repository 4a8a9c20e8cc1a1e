"""Builds a Workflow from its plain form (what YAML, JSON and the DSL all produce), validating everything.

Every problem is collected with its path before anything is refused, so one error message lists them all.
"""

from __future__ import annotations

import copy
import re
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from legato.errors import DefinitionError, Problem
from legato.expressions import Template, TemplateError, compile_template
from legato.model.durations import parse_duration, parse_time
from legato.model.fields import Field
from legato.model.reader import Reader, join, read_fields
from legato.model.retries import DEFAULTS_KEYS, check_pace, read_overrides, read_retry
from legato.model.schedule import PRESETS, Schedule, cron_problem
from legato.model.service import check_path, check_url_path
from legato.model.triggers import read_triggers
from legato.model.workflow import (
    DEFAULT_RETRY,
    NOTIFY_ON,
    STEP_KINDS,
    TRIGGERS,
    Action,
    Branch,
    Emit,
    Fail,
    HttpCall,
    Listen,
    MapOver,
    Notify,
    Poll,
    PythonCall,
    RetryPolicy,
    Step,
    SubWorkflow,
    Wait,
    Webhook,
    Workflow,
    calls_out,
)

LAST_TIME = 7258118400.0  # 2200-01-01T00:00:00Z: far enough, with room for the calendar math
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
FUNCTION_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.<>]*$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
TAG = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_STATUS_CLASS = re.compile(r"^([1-5])xx$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


@dataclass(frozen=True, slots=True)
class _Defaults:
    retry: dict[str, Any]  # the retry fields the workflow's `defaults` give
    timeout: float | None
    notify: dict[str, Any] = field(default_factory=dict)  # Airflow's email keys of default_args


AIRFLOW_EMAIL_KEYS = ("email", "email_on_failure", "email_on_retry")


def build_workflow(
    data: Any,
    *,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    services: Collection[str] | None = None,
) -> Workflow:
    """Validate `data` and return the model; raise DefinitionError listing every problem.

    `functions` maps "module:qualname" to callables defined by the DSL; `services`, when given, is the
    directory's names, so a step calling an unknown service is refused.
    """
    problems: list[Problem] = []
    r = Reader(data, "", problems)
    if not r.ok:
        raise DefinitionError(problems)
    name = r.get("name", str)
    if name is not None and not WORKFLOW_NAME.fullmatch(name):
        r.problem(
            "name",
            "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    description = r.get("description", str, "")
    inputs = read_fields(r.raw("inputs"), "inputs", problems)
    outputs = read_fields(r.raw("outputs"), "outputs", problems)
    output = _template(r, "output")
    timeout = r.duration("timeout")
    if timeout is not None and timeout <= 0:
        r.problem("timeout", "must be positive")
    if r.has("defaults") and r.has("default_args"):
        r.problem("default_args", "give `defaults` or `default_args` (its Airflow name), not both")
    key = "default_args" if r.has("default_args") else "defaults"
    defaults = _read_defaults(r.raw(key), key, problems)
    r.seen.update(("defaults", "default_args"))
    schedule = _read_schedule(r, inputs)
    notify = _read_notify(r, problems, defaults.notify)
    airflow = _read_airflow(r)
    triggers = read_triggers(r.raw("triggers"), "triggers", problems)
    tags = r.names("tags")
    for tag in tags:
        if not TAG.fullmatch(tag):
            r.problem("tags", f"tag {tag!r} must be 1-64 letters, digits, '_', '.', ':' or '-'")

    raw_steps = r.raw("steps")
    step_items: list[tuple[str, Any, str]] = []
    if isinstance(raw_steps, dict):
        step_items = [(str(k), v, f"steps.{k}") for k, v in raw_steps.items()]
    elif isinstance(raw_steps, list):
        for i, item in enumerate(raw_steps):
            step_name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(step_name, str):
                problems.append(Problem(f"steps[{i}].name", "is required"))
                continue
            body = {k: v for k, v in item.items() if k != "name"}
            step_items.append((step_name, body, f"steps.{step_name}"))
    else:
        r.problem("steps", "is required: a mapping of step name to step")
    if isinstance(raw_steps, dict | list) and not raw_steps:
        r.problem("steps", "must hold at least one step")
    r.done()

    steps: dict[str, Step] = {}
    for step_name, body, path in step_items:
        if not STEP_NAME.fullmatch(step_name):
            problems.append(
                Problem(path, "a step name must be a letter or '_' then letters, digits, '_'")
            )
            continue
        if step_name in steps:
            problems.append(Problem(path, "duplicate step name"))
            continue
        step = _read_step(step_name, body, path, defaults, problems)
        if step is not None:
            steps[step_name] = step

    if not problems:
        steps = _link_branches(steps)
        _check_graph(steps, problems)
    order: list[str] = []
    if not problems:
        order = _topological_order(steps, problems)
    if not problems:
        _check_references(steps, order, output, problems)
    if services is not None:  # with the others: every problem of a document at once
        problems.extend(unknown_services(steps, services))
    if problems:
        raise DefinitionError(problems)

    ordered = {n: steps[n] for n in order}
    if airflow is not None:  # how `ti.xcom_pull` reads each step (see engine/airflow.py)
        airflow["kinds"] = {n: _xcom_kind(s) for n, s in ordered.items()}
    downstream: dict[str, list[str]] = {n: [] for n in ordered}
    for s in ordered.values():
        for dep in s.depends_on:
            downstream[dep].append(s.name)
    spec = copy.deepcopy(data)
    if isinstance(raw_steps, list):
        spec["steps"] = {n: b for n, b, _ in step_items}
    return Workflow(
        name=name,
        steps=ordered,
        spec=spec,
        inputs=inputs,
        outputs=outputs,
        output=output,
        timeout=timeout,
        description=description,
        functions=dict(functions or {}),
        downstream={k: tuple(v) for k, v in downstream.items()},
        roots=tuple(n for n, s in ordered.items() if not s.depends_on),
        schedule=schedule,
        tags=tuple(dict.fromkeys(tags)),
        notify=notify,
        airflow=airflow,
        triggers=triggers,
    )


def _xcom_kind(step: Step) -> str:
    """How `ti.xcom_pull` reads a step: `http` for a call answered at once (its XCom is the
    answer's body), else the step's kind."""
    action = step.action
    if isinstance(action, HttpCall) and action.poll is None and not action.callback:
        return "http"
    return step.kind


def _template(r: Reader, key: str, *, required: bool = False) -> Template | None:
    if not r.has(key):
        if required:
            r.problem(key, "is required")
        r.seen.add(key)
        return None
    try:
        return compile_template(r.raw(key))
    except TemplateError as exc:
        r.problem(key, str(exc))
        return None


def _read_airflow(r: Reader) -> dict[str, Any] | None:
    """`airflow: {params: {...}}` (or `airflow: {}`): Airflow's names in templates."""
    if not r.has("airflow"):
        r.seen.add("airflow")
        return None
    raw = r.raw("airflow")
    if not isinstance(raw, dict) or set(raw) - {"params"}:
        r.problem("airflow", "must be a mapping with an optional `params` mapping")
        return None
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        r.problem("airflow.params", "must be a mapping")
        return None
    return {"params": params}


def _read_notify(r: Reader, problems: list[Problem], fallback: dict[str, Any]) -> Notify:
    """Top-level email fields, else those `default_args` carried (as Airflow lets them)."""
    if fallback and not any(r.has(k) for k in AIRFLOW_EMAIL_KEYS):
        r = Reader({**r.data, **fallback}, r.path, problems)
        r.path = "default_args"
    emails = r.names("email")
    for address in emails:
        if not EMAIL.fullmatch(address):
            r.problem("email", f"{address!r} is not an email address")
    email_on = set()
    for event, default in (("failure", True), ("retry", False), ("success", False)):
        key = f"email_on_{event}"
        if r.has(key) and not emails:
            r.problem(key, "needs `email`, the addresses to write to")
        if r.get(key, bool, default):
            email_on.add(event)
    hooks: list[Webhook] = []
    raw = r.raw("webhooks")
    if raw is not None and not isinstance(raw, list):
        r.problem("webhooks", "must be a list of {url, on}")
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        h = Reader(item, join(r.at("webhooks"), i), problems)
        if not h.ok:
            continue
        url = h.get("url", str)
        if url is not None and not url.startswith(("http://", "https://")):
            h.problem("url", "must be an http:// or https:// URL")
        on = h.names("on") if h.has("on") else ("failure",)
        unknown = [e for e in on if e not in NOTIFY_ON]
        if unknown:
            h.problem("on", f"unknown event {unknown[0]!r}; known: {', '.join(NOTIFY_ON)}")
        h.done()
        if url is not None:
            hooks.append(Webhook(url, frozenset(on)))
    return Notify(emails, frozenset(email_on), tuple(hooks))


def _read_schedule(r: Reader, inputs: tuple[Field, ...]) -> Schedule | None:
    """`schedule` with its companions; these only mean something together, so alone they are refused."""
    raw = r.raw("schedule")
    start = r.convert("start_date", parse_time, None)
    end = r.convert("end_date", parse_time, None)
    catchup = r.get("catchup", bool, True)
    max_active = r.get("max_active_runs", int, None)
    if raw is None:
        # `schedule: null` said outright (Airflow's schedule_interval=None): started runs only,
        # and the calendar fields given with it mean nothing; left out, they are a mistake.
        for key in ("start_date", "end_date", "catchup", "max_active_runs"):
            if r.has(key) and not r.has("schedule"):
                r.problem(key, "needs a `schedule`")
        return None
    cron: str | None = None
    every: float | None = None
    if isinstance(raw, str) and (raw.startswith("@") or " " in raw.strip()):
        problem = cron_problem(raw.strip())
        if problem:
            r.problem("schedule", problem)
        cron = PRESETS.get(raw.strip(), raw.strip())
    else:
        try:
            every = parse_duration(raw)
        except ValueError:
            r.problem("schedule", cron_problem("?") or "")
        else:
            if every < 1:
                r.problem("schedule", "an interval must be at least 1s")
    if max_active is not None and max_active < 1:
        r.problem("max_active_runs", "must be at least 1")
    for key, value in (("start_date", start), ("end_date", end)):
        if value is not None and not 0 <= value <= LAST_TIME:
            r.problem(key, "must be between 1970 and 2200 (epoch seconds, or an ISO 8601 time)")
    if start is not None and end is not None and end <= start:
        r.problem("end_date", "must be after start_date")
    for f in inputs:
        if f.name == "schedule":
            r.problem(
                "inputs",
                "a scheduled workflow cannot declare an input named `schedule`: it holds the run's interval",
            )
        elif f.required:
            r.problem(
                "inputs",
                f"a scheduled run has no caller to give input {f.name!r}: give it a default",
            )
    return Schedule(cron, every, start, end, catchup, max_active)


def _read_defaults(data: Any, path: str, problems: list[Problem]) -> _Defaults:
    if data is None:
        return _Defaults({}, None)
    notify: dict[str, Any] = {}
    if path == "default_args" and isinstance(data, dict):
        notify = {k: data[k] for k in AIRFLOW_EMAIL_KEYS if k in data}
        data = {k: v for k, v in data.items() if k not in AIRFLOW_EMAIL_KEYS}
    r = Reader(data, path, problems)
    retry = read_overrides(r, DEFAULTS_KEYS)
    check_pace(replace(DEFAULT_RETRY, **retry), path, DEFAULTS_KEYS, problems)
    timeout = r.duration("timeout")
    r.done()
    return _Defaults(retry, timeout, notify)


def _step_retry(
    action: Action | None, data: Any, path: str, defaults: _Defaults, problems: list[Problem]
) -> RetryPolicy:
    """The most specific setting wins: the step's `retry`, else the workflow's `defaults`, else
    the built-in default (for a step that calls out, which its service's `retry` may replace at
    run time; for others, no retries). Fields a setting leaves out come from the level below."""
    base = DEFAULT_RETRY if calls_out(action) else RetryPolicy()
    if defaults.retry:
        base = replace(base, **defaults.retry, fallback=False, given=frozenset(defaults.retry))
    return read_retry(data, path, base, problems)


def _read_step(
    name: str, data: Any, path: str, defaults: _Defaults, problems: list[Problem]
) -> Step | None:
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    before = len(problems)
    kinds = [k for k in STEP_KINDS if k in r.data]
    if len(kinds) != 1:
        found = f" (found {', '.join(kinds)})" if kinds else ""
        r.problem(None, f"needs exactly one of {', '.join(STEP_KINDS)}{found}")
        return None
    kind = kinds[0]
    r.seen.add(kind)
    action = _read_action(kind, r.data[kind], r.at(kind), problems)
    depends_on = r.names("depends_on")
    trigger = r.get("trigger", str, "all_succeeded")
    if trigger not in TRIGGERS:
        r.problem("trigger", f"must be one of {', '.join(TRIGGERS)}")
    retry = _step_retry(action, r.raw("retry"), r.at("retry"), defaults, problems)
    timeout = r.duration("timeout", defaults.timeout)
    if timeout is not None and timeout <= 0:
        r.problem("timeout", "must be positive")
    optional = r.get("optional", bool, False)
    description = r.get("description", str, "")
    r.done()
    if len(problems) > before or action is None:
        return None
    if len(set(depends_on)) != len(depends_on):
        problems.append(Problem(join(path, "depends_on"), "lists a step twice"))
    if isinstance(action, HttpCall) and action.poll is not None and timeout is None:
        problems.append(
            Problem(join(path, "timeout"), "is required with poll: how long to look for the result")
        )
    return Step(name, action, depends_on, trigger, retry, timeout, optional, description)


def _read_action(kind: str, data: Any, path: str, problems: list[Problem]) -> Action | None:
    if kind == "http":
        return _read_http(data, path, problems)
    if kind == "python":
        return _read_python(data, path, problems)
    if kind == "branch":
        return _read_branch(data, path, problems)
    if kind == "map":
        return _read_map(data, path, problems)
    if kind == "wait":
        return _read_wait(data, path, problems)
    if kind == "listen":
        return _read_listen(data, path, problems)
    if kind == "workflow":
        return _read_subworkflow(data, path, problems)
    if kind == "emit":
        return _read_emit(data, path, problems)
    if isinstance(data, str):
        data = {"message": data}
    r = Reader(data, path, problems)
    message = _template(r, "message", required=True)
    r.done()
    return Fail(message) if message is not None else None


def _read_wait(data: Any, path: str, problems: list[Problem]) -> Wait | None:
    """`wait: 10m`, `wait: {for: 10m}` or `wait: {until: "{{ input.ship_at }}"}`."""
    if not isinstance(data, dict):
        data = {"for": data}
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    if r.has("for") == r.has("until"):
        r.problem(None, "needs exactly one of for (a duration) or until (a time)")
        r.done()
        return None
    duration = r.duration("for", None)
    until = _template(r, "until")
    r.done()
    if duration is None and until is None:
        return None
    return Wait(duration, until)


def _read_subworkflow(data: Any, path: str, problems: list[Problem]) -> SubWorkflow | None:
    """`workflow: {name: invoice, input: {...}, version: 2}` (or just the name)."""
    if isinstance(data, str):
        data = {"name": data}
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    name = r.get("name", str, None)
    if name is None or not WORKFLOW_NAME.fullmatch(name):
        r.problem("name", "is required: the name of the workflow to run")
    input_t = _template(r, "input")
    version = r.get("version", int, None)
    if version is not None and version < 1:
        r.problem("version", "must be at least 1")
    r.done()
    return SubWorkflow(name, input_t, version) if name else None


def _read_emit(data: Any, path: str, problems: list[Problem]) -> Emit | None:
    """`emit: {transport: nats, to: billing.commands, message: {...}, headers: {...}}`."""
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    transport = r.get("transport", str, None)
    if not transport:
        r.problem("transport", "is required: the name of a transport the server was given")
    to = _template(r, "to", required=True)
    message = _template(r, "message")
    headers = _template(r, "headers")
    r.done()
    if not transport or to is None:
        return None
    return Emit(transport, to, message, headers)


def _read_listen(data: Any, path: str, problems: list[Problem]) -> Listen | None:
    """`listen: {event: payment.received, key: "{{ input.order_id }}"}` (or just the event type)."""
    if isinstance(data, str):
        data = {"event": data}
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    event = r.get("event", str, None)
    if event is None or not event.strip():
        r.problem("event", "is required: the event type to wait for")
    key = _template(r, "key")
    r.done()
    return Listen(event, key) if event else None


def _read_http(data: Any, path: str, problems: list[Problem]) -> HttpCall | None:
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    before = len(problems)
    service = r.get("service", str, None)
    url = _template(r, "url")
    if url is not None and isinstance(url.source, str) and "{" not in url.source:
        bad_url = check_url_path(url.source)  # a templated one is checked once rendered
        if bad_url is not None:
            r.problem("url", f"its path {bad_url}")
    if (service is None) == (not r.has("url")):
        r.problem(None, "needs exactly one of service (a directory name) or url")
    method_raw = r.get("method", str, None)
    json_t = _template(r, "json")
    body = _template(r, "body")
    if json_t is not None and body is not None:
        r.problem("body", "cannot be given with json")
    method = (method_raw or ("POST" if json_t or body else "GET")).upper()
    if method not in METHODS:
        r.problem("method", f"must be one of {', '.join(METHODS)}")
    path_t = _template(r, "path") or compile_template("")
    if isinstance(path_t.source, str) and "{" not in path_t.source:
        bad_path = check_path(path_t.source)  # a templated one is checked once rendered
        if bad_path is not None:
            r.problem("path", bad_path)
    query = _template(r, "query")
    headers = _template(r, "headers")
    success = _read_success(r)
    callback = r.get("async", bool, False)
    poll = _read_poll(r.raw("poll"), r.at("poll"), problems) if r.has("poll") else None
    if poll is not None and callback:
        r.problem("poll", "cannot be combined with async: the result comes one way or the other")
    heartbeat = r.duration("heartbeat", None)
    if heartbeat is not None and not callback:
        r.problem("heartbeat", "applies only to an async call (async: true)")
    if heartbeat is not None and heartbeat <= 0:
        r.problem("heartbeat", "must be positive")
    follow = r.get("follow_redirects", bool, None)
    r.done()
    if len(problems) > before:
        return None
    return HttpCall(
        service,
        url,
        method,
        path_t,
        query,
        headers,
        json_t,
        body,
        success,
        callback,
        heartbeat,
        poll,
        follow,
    )


def _read_poll(data: Any, path: str, problems: list[Problem]) -> Poll | None:
    """`poll: {every: 2s, url: "{{ accepted.body.result_url }}"}` or `poll: {every: 2s, s3: {bucket: b}}`."""
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    every = r.duration("every", 1.0)
    if every is not None and every <= 0:
        r.problem("every", "must be positive")
    url = _template(r, "url")
    s3 = r.get("s3", dict, None)
    bucket = None
    names: dict[str, str] = {}
    if s3 is not None:
        bucket = s3.get("bucket")
        names = {k: v for k, v in s3.items() if k in ("bucket_header", "key_header")}
        bad = any(not isinstance(v, str) or not _HEADER.fullmatch(v) for v in names.values())
        if not isinstance(bucket, str) or not bucket or set(s3) - {"bucket", *names} or bad:
            r.problem(
                "s3", "must be {bucket: <name>, bucket_header?: <header>, key_header?: <header>}"
            )
            bucket = None
    if (url is None) == (s3 is None):
        r.problem(None, "needs exactly one of url or s3")
    r.done()
    if every is None or (url is None and bucket is None):
        return None
    return Poll(every, url, bucket, names.get("bucket_header"), names.get("key_header"))


def _read_success(r: Reader) -> tuple[tuple[int, int], ...]:
    raw = r.raw("success")
    if raw is None:
        return ((200, 299),)
    items = raw if isinstance(raw, list) else [raw]
    ranges: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            ranges.append((item, item))
        elif isinstance(item, str) and (m := _STATUS_CLASS.fullmatch(item)):
            lo = int(m.group(1)) * 100
            ranges.append((lo, lo + 99))
        else:
            r.problem(f"success[{i}]", "must be a status code (100-599) or a class such as '2xx'")
    if not items:
        r.problem("success", "must list at least one status code or class")
    return tuple(ranges)


def _read_python(data: Any, path: str, problems: list[Problem]) -> PythonCall | None:
    if isinstance(data, str):
        data = {"function": data}
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    function = r.get("function", str)
    if function is not None and not FUNCTION_PATH.fullmatch(function):
        r.problem("function", "must be an import path such as 'package.module:function'")
    args = _template(r, "args")
    if args is not None and not isinstance(args.source, dict):
        r.problem("args", "must be a mapping of argument name to value")
    r.done()
    if function is None:
        return None
    return PythonCall(function, args)


def _read_branch(data: Any, path: str, problems: list[Problem]) -> Branch | None:
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    cases: list[tuple[Template, tuple[str, ...]]] = []
    raw_cases = r.get("cases", list, [])
    for i, item in enumerate(raw_cases):
        cr = Reader(item, join(r.at("cases"), i), problems)
        if not cr.ok:
            continue
        when = _template(cr, "when", required=True)
        then = cr.names("then")
        if not cr.has("then"):
            cr.problem("then", "is required: the steps to run when this case holds")
        cr.done()
        if when is not None:
            cases.append((when, then))
    otherwise = r.names("otherwise")
    if not raw_cases and not otherwise:
        r.problem("cases", "is required: a list of {when, then}")
    r.done()
    return Branch(tuple(cases), otherwise)


def _read_map(data: Any, path: str, problems: list[Problem]) -> MapOver | None:
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    over = _template(r, "over", required=True)
    concurrency = r.get("concurrency", int, 10)
    if concurrency < 1:
        r.problem("concurrency", "must be at least 1")
    inner = r.get("step", dict, None)
    action: Action | None = None
    if inner is None:
        r.problem("step", "is required: {http: ...} or {python: ...} run for each item")
    else:
        kinds = [k for k in ("http", "python") if k in inner]
        extra = [k for k in inner if k not in ("http", "python")]
        if len(kinds) != 1 or extra:
            r.problem("step", "must hold exactly one of http or python")
        else:
            action = _read_action(kinds[0], inner[kinds[0]], join(r.at("step"), kinds[0]), problems)
    r.done()
    if over is None or not isinstance(action, HttpCall | PythonCall):
        return None
    return MapOver(over, action, concurrency)


def _link_branches(steps: dict[str, Step]) -> dict[str, Step]:
    """A branch's targets run after it: add the edge where the definition left it implicit."""
    out = dict(steps)
    for s in steps.values():
        if isinstance(s.action, Branch):
            for target in s.action.targets:
                t = out.get(target)
                if t is not None and s.name not in t.depends_on:
                    out[target] = replace(t, depends_on=(*t.depends_on, s.name))
    return out


def _check_graph(steps: Mapping[str, Step], problems: list[Problem]) -> None:
    for s in steps.values():
        for i, dep in enumerate(s.depends_on):
            if dep not in steps:
                problems.append(Problem(f"steps.{s.name}.depends_on[{i}]", f"unknown step {dep!r}"))
            elif dep == s.name:
                problems.append(
                    Problem(f"steps.{s.name}.depends_on[{i}]", "a step cannot depend on itself")
                )
        if isinstance(s.action, Branch):
            for target in s.action.targets:
                if target not in steps:
                    problems.append(Problem(f"steps.{s.name}.branch", f"unknown step {target!r}"))


def _topological_order(steps: Mapping[str, Step], problems: list[Problem]) -> list[str]:
    indegree = {n: len(s.depends_on) for n, s in steps.items()}
    children: dict[str, list[str]] = {n: [] for n in steps}
    for s in steps.values():
        for dep in s.depends_on:
            children[dep].append(s.name)
    ready = deque(n for n, d in indegree.items() if d == 0)
    order: list[str] = []
    while ready:
        n = ready.popleft()
        order.append(n)
        for c in children[n]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    if len(order) != len(steps):
        cycle = _find_cycle(steps, {n for n in steps if n not in order})
        problems.append(Problem("steps", f"the steps form a cycle: {' -> '.join(cycle)}"))
    return order


def _find_cycle(steps: Mapping[str, Step], left: set[str]) -> list[str]:
    start = min(left)
    path, seen = [start], {start}
    node = start
    while True:
        node = next(d for d in steps[node].depends_on if d in left)
        if node in seen:
            cycle = [*path[path.index(node) :], node]
            return list(reversed(cycle))
        path.append(node)
        seen.add(node)


def _ancestors(steps: Mapping[str, Step], order: list[str]) -> dict[str, int]:
    """Each step's ancestors as a bit set over `order` (sets of names grow quadratically: a chain
    of 10,000 steps took seconds)."""
    index = {n: i for i, n in enumerate(order)}
    anc: dict[str, int] = {}
    for n in order:
        acc = 0
        for dep in steps[n].depends_on:
            acc |= anc[dep] | (1 << index[dep])
        anc[n] = acc
    return anc


def _action_templates(action: Action, path: str) -> list[tuple[str, Template]]:
    out: list[tuple[str, Template | None]] = []
    if isinstance(action, HttpCall):
        out = [
            (f"{path}.url", action.url),
            (f"{path}.path", action.path),
            (f"{path}.query", action.query),
            (f"{path}.headers", action.headers),
            (f"{path}.json", action.json),
            (f"{path}.body", action.body),
        ]
    elif isinstance(action, PythonCall):
        out = [(f"{path}.args", action.args)]
    elif isinstance(action, Branch):
        out = [(f"{path}.cases[{i}].when", t) for i, (t, _) in enumerate(action.cases)]
    elif isinstance(action, MapOver):
        return [
            (f"{path}.over", action.over),
            *_action_templates(action.action, f"{path}.step.{action.action.kind}"),
        ]
    elif isinstance(action, Fail):
        out = [(f"{path}.message", action.message)]
    elif isinstance(action, Wait):
        out = [(f"{path}.until", action.until)]
    elif isinstance(action, Listen):
        out = [(f"{path}.key", action.key)]
    elif isinstance(action, SubWorkflow):
        out = [(f"{path}.input", action.input)]
    elif isinstance(action, Emit):
        out = [
            (f"{path}.to", action.to),
            (f"{path}.message", action.message),
            (f"{path}.headers", action.headers),
        ]
    return [(p, t) for p, t in out if t is not None]


def _check_references(
    steps: Mapping[str, Step], order: list[str], output: Template | None, problems: list[Problem]
) -> None:
    anc = _ancestors(steps, order)
    index = {n: i for i, n in enumerate(order)}
    for n in order:
        s = steps[n]
        for where, t in _action_templates(s.action, f"steps.{n}.{s.kind}"):
            for ref in sorted(t.references):
                if ref not in steps:
                    problems.append(Problem(where, f"refers to unknown step {ref!r}"))
                elif not anc[n] >> index[ref] & 1:
                    problems.append(
                        Problem(
                            where,
                            f"refers to step {ref!r}, which does not run before {n!r} "
                            f"(add it to depends_on)",
                        )
                    )
    if output is not None:
        for ref in sorted(output.references):
            if ref not in steps:
                problems.append(Problem("output", f"refers to unknown step {ref!r}"))


def unknown_services(steps: Mapping[str, Step], services: Collection[str]) -> list[Problem]:
    """Problems for every step that calls a service the directory does not have."""
    problems: list[Problem] = []
    for s in steps.values():
        action = s.action.action if isinstance(s.action, MapOver) else s.action
        if (
            isinstance(action, HttpCall)
            and action.service is not None
            and action.service not in services
        ):
            where = f"steps.{s.name}.{s.kind}" + (
                ".step.http" if isinstance(s.action, MapOver) else ""
            )
            problems.append(Problem(f"{where}.service", f"unknown service {action.service!r}"))
    return problems
