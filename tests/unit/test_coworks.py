"""legato.compat.coworks builds Legato workflows from CoWorks/Airflow DAG code; bad input is refused
with the CoWorks field's name; Airflow's template names render from a run's state."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest

from legato.compat.coworks import (
    BranchTechMicroServiceOperator,
    TechMicroServiceAsyncGroup,
    TechMicroServiceOperator,
    biz,
    configure,
    get_current_context,
    task,
)
from legato.compat.coworks.taskflow import runner
from legato.engine.airflow import TaskInstance, XComTooLarge, airflow_names, step_name
from legato.errors import DefinitionError, LegatoError
from legato.expressions import compile_template
from legato.sandbox import LIMITS


def tms(task_id: str, **kw: Any) -> TechMicroServiceOperator:
    return TechMicroServiceOperator(task_id=task_id, cws_name="svc", **kw)


def refused(make: Any) -> tuple[str, str]:
    with pytest.raises(DefinitionError) as info:
        make()
    problem = info.value.problems[0]
    return problem.path, problem.message


def test_the_operators_become_steps_with_their_dependencies() -> None:
    @biz(schedule_interval=None, start_date=datetime(2022, 1, 1), catchup=False)
    def flow() -> None:
        a, b, c, d = tms("a"), tms("b"), tms("c"), tms("d")
        a >> [b, c]
        d << [b, c]
        e = tms("e-1")
        [b, c] >> e
        f = tms("f")
        f << d

    wf = flow()
    assert wf.schedule is None and wf.spec["schedule"] is None
    deps = {n: set(s.depends_on) for n, s in wf.steps.items()}
    assert deps == {
        "a": set(),
        "b": {"a"},
        "c": {"a"},
        "d": {"b", "c"},
        "e_1": {"b", "c"},
        "f": {"d"},
    }


@pytest.mark.parametrize(
    ("interval", "cron", "every"),
    [
        ("@daily", "0 0 * * *", None),
        ("5 4 * * *", "5 4 * * *", None),
        (timedelta(hours=2), None, 7200.0),
    ],
)
def test_schedule_interval_takes_presets_cron_and_timedeltas(
    interval: Any, cron: str | None, every: float | None
) -> None:
    @biz(schedule_interval=interval, start_date=datetime(2023, 1, 1), catchup=False)
    def scheduled() -> None:
        tms("a")

    wf = scheduled()
    assert wf.schedule is not None and wf.schedule.cron == cron and wf.schedule.every == every
    assert wf.schedule.catchup is False


def test_default_args_map_onto_retries_and_email() -> None:
    @biz(
        schedule_interval=None,
        default_args={
            "retries": 2,
            "retry_delay": timedelta(seconds=30),
            "email": ["ops@example.com"],
            "email_on_failure": True,
            "email_on_retry": True,
            "owner": "billing",
        },
    )
    def with_defaults() -> None:
        tms("a")

    wf = with_defaults()
    retry = wf.steps["a"].retry
    assert (retry.retries, retry.delay, retry.backoff, retry.jitter) == (2, 30.0, 1.0, False)
    assert retry.on == {"network", "timeout", "5xx", "429", "4xx", "status", "callback"}
    assert wf.notify.email == ("ops@example.com",)
    assert wf.notify.email_on == {"failure", "retry"}


def test_bad_input_names_the_coworks_field() -> None:
    def in_biz(body: Any) -> Any:
        return lambda: biz(schedule_interval=None)(body)()

    assert refused(in_biz(lambda: TechMicroServiceOperator(task_id="x")))[0] == "cws_name"
    assert refused(in_biz(lambda: TechMicroServiceOperator(task_id="x", api_id="a")))[0] == "token"
    assert refused(in_biz(lambda: tms("x", method="FETCH")))[0] == "method"
    assert refused(in_biz(lambda: tms("x", entry=3)))[0] == "entry"
    assert refused(in_biz(lambda: tms("x", asynchronous="yes")))[0] == "asynchronous"
    assert refused(in_biz(lambda: tms("x", colour="red")))[0] == "colour"
    templated = in_biz(lambda: TechMicroServiceOperator(task_id="x", cws_name="{{ params.s }}"))
    assert refused(templated)[0] == "cws_name"
    assert refused(in_biz(lambda: [tms("x"), tms("x")]))[1].startswith("two tasks are named")

    def branch(**kw: Any) -> Any:
        def body() -> None:
            tms("call")
            tms("ok")
            BranchTechMicroServiceOperator(task_id="check", **kw)

        return in_biz(body)

    assert refused(branch(cws_task_id="call", on_failure="nope"))[0] == "on_failure"
    assert refused(branch(cws_task_id="call", on_success="ok", on_no_content=["ok", "x"]))[0] == (
        "on_no_content"
    )
    assert refused(branch(cws_task_id="missing", on_success="ok"))[0] == "cws_task_id"
    assert refused(branch(cws_task_id="call", response_check=len))[0] == "on_check"
    assert refused(lambda: tms("outside"))[0] == "task_id"

    assert refused(lambda: biz(default_args={"retries": 1, "sla": 3}))[0] == "default_args.sla"
    assert refused(lambda: biz(default_args={"retry_delay": "5m"}))[0] == "default_args.retry_delay"
    assert refused(lambda: biz(schedule_interval="@once"))[0] == "schedule_interval"
    assert refused(lambda: biz(schedule_interval=None, schedule="@daily"))[0] == (
        "schedule_interval"
    )
    assert refused(lambda: biz(fileloc="x"))[0] == "fileloc"


def test_the_api_gateway_url_is_configurable() -> None:
    @biz(schedule_interval=None)
    def gw() -> None:
        TechMicroServiceOperator(task_id="a", api_id="abc", stage="v1", token="t", entry="/x")

    assert gw().spec["steps"]["a"]["http"]["url"] == (
        "https://abc.execute-api.eu-west-1.amazonaws.com/v1"
    )
    configure(api_url="http://127.0.0.1:9/{api_id}/{stage}")
    try:
        http = gw().spec["steps"]["a"]["http"]
    finally:
        configure()
    assert http["url"] == "http://127.0.0.1:9/abc/v1" and http["path"] == "/x"
    assert http["headers"]["Authorization"] == "t"


def test_the_async_group_calls_waits_and_reads() -> None:
    def prepare(n: int) -> dict[str, int]:
        return {"n": n}

    @biz(schedule_interval=None)
    def grouped() -> None:
        g = TechMicroServiceAsyncGroup(
            "g", transformer=prepare, op_kwargs={"n": 3}, method="POST", cws_name="svc", timeout=60
        )
        after = tms("after")
        g >> after

    wf = grouped()
    assert list(wf.steps) == ["g__prepare", "g__call", "g__read", "after"]
    call = wf.spec["steps"]["g__call"]
    assert call["timeout"] == 60 and call["http"]["json"] == "{{ steps.g__prepare.output }}"
    assert call["http"]["poll"]["s3"]["key_header"] == "X-CWS-S3Key"
    assert wf.steps["after"].depends_on == ("g__read",)


def test_templates_are_text_unless_native_objects_are_asked_for() -> None:
    def build(native: bool) -> Any:
        @biz(schedule_interval=None, render_template_as_native_obj=native)
        def texts() -> None:
            tms("a", json={"d": "{{ dag_run.conf['d'] }}"})

        return compile_template(texts().spec["steps"]["a"]["http"]["json"])

    names = airflow_names({}, {"id": "r1", "workflow": "w"}, {"d": {"x": 1}}, 0.0, {}, {})
    assert build(True).render(names) == {"d": {"x": 1}}
    assert build(False).render(names) == {"d": "{'x': 1}"}  # as Airflow renders it


def test_airflow_names_read_the_run() -> None:
    steps = {
        "call": {"status": "succeeded", "output": {"status": 201, "body": {"id": 7}}},
        "empty": {"status": "succeeded", "output": {"status": 204, "body": ""}},
        "g__read": {"status": "succeeded", "output": "text"},
        "failed": {"status": "failed", "output": None},
    }
    kinds = {"call": "http", "empty": "http", "g__read": "python"}
    schedule = {
        "interval_start": "2026-03-04T00:00:00Z",
        "interval_end": "2026-03-05T00:00:00Z",
        "logical_date": "2026-03-04T00:00:00Z",
    }
    ctx = airflow_names(
        {"p": 1}, {"id": "r1", "workflow": "w"}, {"schedule": schedule, "x": 2}, 0.0, steps, kinds
    )
    assert ctx["dag_run"]["conf"] == {"x": 2} and ctx["params"] == {"p": 1, "x": 2}
    assert (ctx["ds"], ctx["ds_nodash"]) == ("2026-03-04", "20260304")

    def render(text: str) -> Any:
        return compile_template(text).render(ctx)

    assert render("{{ ti.xcom_pull(task_ids='call') }}") == {"id": 7}
    assert render("{{ ti.xcom_pull(task_ids='call', key='status_code') }}") == 201
    assert render("{{ ti.xcom_pull(task_ids='empty') }}") == {}
    assert render("{{ ti.xcom_pull(task_ids=['g.read', 'failed']) }}") == ["text", None]
    assert render("{{ ds }}/{{ params.p }}") == "2026-03-04/1"
    manual = airflow_names({}, {"id": "r", "workflow": "w"}, {}, 86400.0, {}, {})
    assert manual["ds"] == "1970-01-02" and manual["dag_run"]["conf"] == {}
    assert step_name("g.read") == "g__read" and step_name("a-b") == "a_b"


def test_get_current_context_is_the_running_tasks_own() -> None:
    with pytest.raises(DefinitionError):
        get_current_context()
    seen: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def body(tag: str) -> str:
        barrier.wait(5)
        ctx = get_current_context()
        seen[tag] = (ctx["dag_run"].conf, ctx["ti"].xcom_pull(task_ids="a"), ctx["ti"].task_id)
        return tag

    run = runner(body)

    def call(tag: str) -> None:
        steps = {"a": {"status": "succeeded", "output": tag}}
        context = {"conf": {"t": tag}, "run_id": "r", "dag_id": "d", "steps": steps}
        run(args=[tag], airflow={**context, "kinds": {"a": "python"}, "task_id": f"t{tag}"})

    threads = [threading.Thread(target=call, args=(t,)) for t in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"x": ({"t": "x"}, "x", "tx"), "y": ({"t": "y"}, "y", "ty")}
    assert TaskInstance({}, {}, "d", "r").xcom_pull(task_ids="none", default=5) == 5


def test_task_calls_pass_results_and_declare_steps() -> None:
    @task
    def double(n: int) -> int:
        return n * 2

    @biz(schedule_interval=None, params={"n": 2})
    def taskflow() -> None:
        first = double(1)
        second = double(first)
        second >> tms("after", json=second)

    wf = taskflow()
    assert list(wf.steps) == ["double", "double__1", "after"]
    args = wf.spec["steps"]["double__1"]["python"]["args"]
    assert args["args"] == ["{{ ti.xcom_pull(task_ids='double') }}"]
    assert wf.steps["double__1"].depends_on == ("double",)
    assert wf.spec["steps"]["after"]["http"]["json"] == "{{ ti.xcom_pull(task_ids='double__1') }}"
    assert wf.spec["airflow"] == {"params": {"n": 2}}


def test_the_plain_form_takes_what_the_compat_writes() -> None:
    from legato.model.build import build_workflow

    def build(**extra: Any) -> Any:
        return build_workflow({"name": "w", **extra, "steps": {"a": {"wait": "1s"}}})

    def problems(**extra: Any) -> list[tuple[str, str]]:
        with pytest.raises(DefinitionError) as info:
            build(**extra)
        return [(p.path, p.message) for p in info.value.problems]

    wf = build(default_args={"retries": 1, "email": "a@b.c", "email_on_retry": True})
    assert wf.notify.email == ("a@b.c",) and wf.notify.email_on == {"failure", "retry"}
    assert build(default_args={"email": "a@b.c"}, email="x@y.z").notify.email == ("x@y.z",)
    assert problems(default_args={"email": "nobody"})[0][0] == "default_args.email"
    assert build(schedule=None, start_date="2022-01-01", catchup=False).schedule is None
    assert problems(start_date="2022-01-01") == [("start_date", "needs a `schedule`")]
    assert build(airflow={"params": {"a": 1}}).airflow == {
        "params": {"a": 1},
        "kinds": {"a": "wait"},
    }
    assert build().airflow is None
    assert problems(airflow={"macros": {}})[0][0] == "airflow"
    poll = {"every": "1s", "s3": {"bucket": "b", "bucket_header": "X-B", "key_header": "X-K"}}
    http = {"url": "http://127.0.0.1/x", "poll": poll}
    step = build_workflow({"name": "p", "steps": {"a": {"http": http, "timeout": "5s"}}}).steps["a"]
    assert step.action.poll.bucket_header == "X-B" and step.action.poll.key_header == "X-K"  # type: ignore[union-attr]
    bad = {**http, "poll": {"every": "1s", "s3": {"bucket": "b", "key_header": "no spaces"}}}
    with pytest.raises(DefinitionError) as info:
        build_workflow({"name": "p", "steps": {"a": {"http": bad, "timeout": "5s"}}})
    assert info.value.problems[0].path == "steps.a.http.poll.s3"


@task
def module_level(n: int) -> dict[str, Any]:
    return {"n": n, "ds": get_current_context()["ds"]}


def test_a_task_found_by_import_runs_as_its_step() -> None:
    """A worker that imports `module:module_level` (not given the workflow) calls the factory with
    the step's arguments: it runs the function in its context."""
    context = {"conf": {}, "run_id": "r", "dag_id": "d", "ds": "2026-01-02", "steps": {}}
    assert module_level(args=[3], airflow=context) == {"n": 3, "ds": "2026-01-02"}
    assert refused(lambda: module_level(3))[0] == "task_id"


def test_missing_ids_and_bare_biz() -> None:
    @biz
    def bare() -> None:
        tms("a")

    assert bare().name == "bare"
    assert refused(lambda: biz(schedule_interval=None)(lambda: TechMicroServiceOperator())())[
        0
    ] == ("task_id")
    no_cws_task = lambda: BranchTechMicroServiceOperator(task_id="b", on_success="b")  # noqa: E731
    assert refused(lambda: biz(schedule_interval=None)(no_cws_task)())[0] == "cws_task_id"


def test_the_dsl_takes_schedule_interval() -> None:
    from legato import dsl

    def body() -> None:
        dsl.fail("f")

    manual = dsl.workflow(body, name="m", schedule_interval=None, start_date=datetime(2022, 1, 1))
    assert manual.schedule is None and manual.spec["schedule"] is None
    daily = dsl.workflow(body, name="d", schedule_interval="@daily", catchup=False)
    assert daily.schedule is not None and daily.schedule.cron == "0 0 * * *"
    hourly = dsl.workflow(body, name="h", schedule_interval=timedelta(hours=1))
    assert hourly.schedule is not None and hourly.schedule.every == 3600.0
    with pytest.raises(LegatoError, match="not both"):
        dsl.workflow(body, name="x", schedule="@daily", schedule_interval="@daily")


def test_an_async_task_sees_its_context_too() -> None:
    import asyncio

    async def body(n: int) -> Any:
        await asyncio.sleep(0)
        ctx = get_current_context()
        return [n, ctx["params"]["p"], ctx["ti"].xcom_pull(task_ids="a", key="k")]

    run = runner(body)
    steps = {"a": {"status": "succeeded", "output": {"k": "v"}}}
    context = {"conf": {}, "params": {"p": 1}, "run_id": "r", "dag_id": "d", "steps": steps}
    assert asyncio.run(run(kwargs={"n": 2}, airflow=context)) == [2, 1, "v"]
    with pytest.raises(DefinitionError):
        get_current_context()  # reset once the task returned


def test_two_lambdas_stay_two_functions() -> None:
    @biz(schedule_interval=None)
    def checks() -> None:
        tms("call")
        tms("yes")
        tms("no")
        for i, check in enumerate([lambda r: r == 1, lambda r: r == 2]):
            BranchTechMicroServiceOperator(
                task_id=f"b{i}", cws_task_id="call", response_check=check, on_check="yes"
            )

    wf = checks()
    paths = {wf.spec["steps"][f"b{i}__check"]["python"]["function"] for i in range(2)}
    assert len(paths) == 2 and all(p in wf.functions for p in paths)
    first, second = (
        wf.functions[wf.spec["steps"][f"b{i}__check"]["python"]["function"]] for i in range(2)
    )
    assert first(kwargs={"result": 1}, airflow={"run_id": "r", "dag_id": "d"}) is True
    assert second(kwargs={"result": 1}, airflow={"run_id": "r", "dag_id": "d"}) is False


def test_data_query_params_and_headers() -> None:
    @biz(schedule_interval=None, render_template_as_native_obj=True)
    def bodies() -> None:
        tms("form", method="POST", data={"a": 1, "b": "x y"})
        tms("text", method="POST", data="{{ dag_run.conf['raw'] }}")
        tms("query", query_params={"day": "{{ ds }}"}, headers={"X-Trace": "t"}, accept="text/csv")
        tms("open", no_auth=True, json_result=False, xcom_push=False, log_response=True)

    steps = bodies().spec["steps"]
    assert steps["form"]["http"]["body"] == "a=1&b=x+y"
    assert steps["text"]["http"]["body"] == "{{ dag_run.conf['raw'] }}"
    query = steps["query"]["http"]
    assert query["query"] == {"day": "{{ ds }}"}
    assert query["headers"]["X-Trace"] == "t" and query["headers"]["Accept"] == "text/csv"

    def in_biz(body: Any) -> Any:
        return lambda: biz(schedule_interval=None)(body)()

    assert refused(in_biz(lambda: tms("x", method="PUT", data={"a": "{{ ds }}"})))[0] == "data"
    assert refused(in_biz(lambda: tms("x", data={}, query_params={})))[0] == "data"
    assert refused(in_biz(lambda: tms("x", data="a=1")))[0] == "data"
    assert refused(in_biz(lambda: tms("x", query_params="a=1")))[0] == "query_params"

    @biz(schedule_interval=None)
    def gets() -> None:
        tms("data", data={"day": "{{ ds }}"})  # GET: `data` is the query, as the seed says
        tms("lone", query_params="{{ dag_run.conf['q'] }}")  # a mapping even as text

    steps = gets().spec["steps"]
    assert steps["data"]["http"]["query"] == {"day": "{{ ds }}{{ '' }}"}
    assert "body" not in steps["data"]["http"]
    assert steps["lone"]["http"]["query"] == "{{ dag_run.conf['q'] }}"
    assert refused(in_biz(lambda: tms("x", data="a", json={})))[0] == "data"
    assert refused(in_biz(lambda: tms("x", query_params=3)))[0] == "query_params"
    assert refused(in_biz(lambda: tms("x", trigger_rule="sometimes")))[0] == "trigger_rule"


@task
def shared_task() -> int:
    return 1


@task
def bare_task() -> int:
    return 2


def test_a_module_level_task_has_the_same_steps_in_every_dag() -> None:
    def make(name: str) -> Any:
        @biz(dag_id=name, schedule_interval=None)
        def dag() -> None:
            s = shared_task()
            tms("a") >> s
            tms("b") >> bare_task

        return dag()

    for wf in (make("one"), make("two"), make("one")):
        deps = {n: list(s.depends_on) for n, s in wf.steps.items()}
        assert deps == {"a": [], "b": [], "shared_task": ["a"], "bare_task": ["b"]}


def test_a_task_gets_only_its_upstream_results_within_a_bound() -> None:
    @task
    def part(i: int) -> int:
        return i

    @task
    def last() -> None:
        return None

    @biz(schedule_interval=None)
    def flow() -> None:
        part(1) >> tms("c") >> last()
        part(2)  # not upstream of `last`

    wf = flow()
    args = wf.spec["steps"]["last"]["python"]["args"]["airflow"]
    assert args["steps"] == "{{ ti.context_steps(['c', 'part']) }}"
    big = "x" * (LIMITS.max_size // 2)
    steps = {
        "small": {"status": "succeeded", "output": {"n": 1}},
        "big": {"status": "succeeded", "output": big},
        "failed": {"status": "failed", "output": None},
        "other": {"status": "succeeded", "output": 1},
    }
    got = TaskInstance(steps, {}, "d", "r").context_steps(["small", "big", "failed"])
    assert got == {
        "small": {"status": "succeeded", "output": {"n": 1}},
        "big": {"status": "succeeded", "too_large": len(big) + 2},
    }
    ti = TaskInstance(got, {}, "d", "r")
    assert ti.xcom_pull(task_ids="small") == {"n": 1}
    assert ti.xcom_pull(task_ids="other") is None
    with pytest.raises(XComTooLarge, match=r"task_ids=.big.*too large"):
        ti.xcom_pull(task_ids="big")


def test_the_context_is_injected_into_parameters_named_after_it() -> None:
    raw = {"conf": {"c": 1}, "run_id": "r", "dag_id": "d", "ds": "2024-01-02", "params": {"p": 1}}

    def named(x: int, ti: Any = None, ds: Any = None, params: Any = None) -> Any:
        return x, ti.run_id, ds, params

    def everything(x: int, **context: Any) -> Any:
        return x, sorted(context), context["dag_run"].conf

    def given(ds: str = "mine") -> str:
        return ds

    assert runner(named)(args=[1], airflow=raw) == (1, "r", "2024-01-02", {"p": 1})
    x, keys, conf = runner(everything)(args=[2], airflow=raw)
    assert x == 2 and conf == {"c": 1}
    assert {"ti", "ds", "params", "dag_run", "run_id", "task_instance"} <= set(keys)
    assert runner(given)(kwargs={"ds": "call's"}, airflow=raw) == "call's"


class _Check:
    def __call__(self, result: Any) -> bool:
        return True


def _two(a: int, result: Any) -> bool:
    return bool(a)


_module_lambda = lambda result: True  # noqa: E731 (what the review tried)


def test_response_check_takes_any_callable_and_a_branch_skips_unnamed_tasks() -> None:
    import functools

    from legato.model.build import build_workflow

    def make(check: Any) -> Any:
        @biz(schedule_interval=None)
        def flow() -> None:
            c = tms("c")
            b = BranchTechMicroServiceOperator(
                task_id="b", cws_task_id="c", on_success="ok", on_check="chk", response_check=check
            )
            c >> b >> [tms("ok"), tms("chk"), tms("other")]

        return flow()

    for check in (_module_lambda, functools.partial(_two, 1), _Check()):
        wf = make(check)
        build_workflow(wf.spec)  # the function path is valid
        cases = wf.spec["steps"]["b"]["branch"]["cases"]
        assert cases[-1] == {"when": "{{ false }}", "then": ["other"]}

    def no_target() -> None:
        tms("c")
        BranchTechMicroServiceOperator(task_id="b", cws_task_id="c")

    def own_call() -> None:
        tms("c")
        BranchTechMicroServiceOperator(task_id="b", cws_task_id="c", on_failure="c")

    for body, field_name in ((no_target, "on_success"), (own_call, "on_failure")):
        path, message = refused(lambda body=body: biz(dag_id="x", schedule_interval=None)(body)())
        assert path == field_name, message


def test_the_docs_native_yaml_validates(tmp_path: Any) -> None:
    """docs/coming-from-coworks.md gives the seed's DAG written natively: `legato validate` takes it."""
    from pathlib import Path

    from click.testing import CliRunner

    from legato.cli import main

    page = Path(__file__).resolve().parents[2] / "docs" / "coming-from-coworks.md"
    text = page.read_text()
    snippet = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "doc.yaml").write_text(snippet)
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "doc.yaml")])
    assert result.exit_code == 0, result.output
    assert "my_first_biz: valid, 4 steps" in result.output


def test_airflow_idioms_work_or_are_refused_by_name() -> None:
    from legato.compat.coworks import chain, cross_downstream

    @task
    def step(n: int) -> int:
        return n

    @biz(
        schedule_interval=None,
        default_args={"email": "ops@example.com"},  # Airflow mails on failure and on retry
    )
    def idioms() -> None:
        a, b, c, d, e = (tms(x) for x in "abcde")
        chain(a, [b, c], [d, e])
        renamed = step.override(task_id="renamed", retries=2)(1)
        cross_downstream([d, e], [renamed])

    wf = idioms()
    deps = {n: set(s.depends_on) for n, s in wf.steps.items()}
    assert deps["b"] == deps["c"] == {"a"} and deps["d"] == {"b"} and deps["e"] == {"c"}
    assert deps["renamed"] == {"d", "e"} and wf.steps["renamed"].retry.retries == 2
    assert wf.notify.email_on == {"failure", "retry"}

    def in_biz(body: Any, **options: Any) -> Any:
        return lambda: biz(dag_id="x", **{"schedule_interval": None, **options})(body)()

    assert refused(in_biz(lambda: step.expand(n=[1, 2])))[0] == "expand"
    assert refused(in_biz(lambda: step(1)["key"]))[0] == "multiple_outputs"
    assert refused(in_biz(lambda: TechMicroServiceOperator("x", cws_name="s")))[0] == "task_id"
    assert refused(in_biz(lambda: [tms("x-y"), tms("x_y")]))[1].startswith("'x-y' and 'x_y'")
    assert refused(in_biz(lambda: tms("x", retries="3")))[0] == "retries"
    assert refused(in_biz(lambda: tms("x", retry_delay="5m")))[0] == "retry_delay"
    assert refused(in_biz(lambda: tms("x"), schedule_interval="@daily"))[0] == "start_date"
    bad_cron = in_biz(
        lambda: tms("x"), schedule_interval="not a cron", start_date=datetime(2024, 1, 1)
    )
    assert refused(bad_cron)[0] == "schedule_interval"
    with pytest.raises(NotImplementedError, match="xcom_push"):
        TaskInstance({}, {}, "d", "r").xcom_push("k", 1)


def test_paths_with_dot_dot_segments_are_refused_when_written_and_when_rendered() -> None:
    from legato.model.build import build_workflow
    from legato.model.service import check_path

    for bad in ("../../admin", "x/../../a", "%2e%2e/a", "..%2F..%2Fa", "%252e%252e/a", "..\\a"):
        assert check_path(bad) is not None, bad
    for fine in ("/a/b", "/a..b/c", "/a/b%2Fc", "/x?to=../y", "/.../x", "", None):
        assert check_path(fine) is None, fine
    static = {"name": "x", "steps": {"a": {"http": {"url": "http://h/b", "path": "/../admin"}}}}
    path, message = refused(lambda: build_workflow(static))
    assert path == "steps.a.http.path" and "'..'" in message
