"""The Python DSL produces the same validated Workflow as the plain form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from legato.dsl import StepNode, branch, fail, http, map_over, task, workflow
from legato.errors import DefinitionError, LegatoError
from legato.model.workflow import Branch, Fail, HttpCall, MapOver, PythonCall, Workflow


def shout(message: str) -> str:
    return message.upper()


def test_workflow_with_http_chain() -> None:
    @workflow(inputs={"order_id": "string"})
    def take_order() -> None:
        reserve = http(
            "reserve", service="stock", path="/reserve", json={"id": "{{ input.order_id }}"}
        )
        charge = http("charge", service="billing", path="/charge")
        reserve >> charge

    assert isinstance(take_order, Workflow)
    w: Workflow = take_order
    assert w.name == "take_order"
    assert list(w.steps) == ["reserve", "charge"]
    assert w.steps["charge"].depends_on == ("reserve",)
    action = w.steps["reserve"].action
    assert isinstance(action, HttpCall)
    assert action.service == "stock"
    assert action.method == "POST"
    assert action.json is not None and action.json.source == {"id": "{{ input.order_id }}"}
    assert w.spec["steps"]["reserve"] == {
        "http": {"service": "stock", "path": "/reserve", "json": {"id": "{{ input.order_id }}"}}
    }
    assert [f.name for f in w.inputs] == ["order_id"]


def test_workflow_name_and_description() -> None:
    @workflow(name="custom-name")
    def flow() -> None:
        """The docstring becomes the description."""
        http("a", url="http://svc.test/")

    w: Workflow = flow
    assert w.name == "custom-name"
    assert w.description == "The docstring becomes the description."

    @workflow(description="explicit")
    def other() -> None:
        """ignored"""
        http("a", url="http://svc.test/")

    assert other.description == "explicit"


def test_bare_decorator_without_parentheses() -> None:
    @workflow
    def bare() -> None:
        http("a", url="http://svc.test/")

    assert isinstance(bare, Workflow)
    assert bare.name == "bare"


def test_rshift_chain_returns_right_operand() -> None:
    @workflow
    def chain() -> None:
        a = http("a", url="http://svc.test/")
        b = http("b", url="http://svc.test/")
        c = http("c", url="http://svc.test/")
        result = a >> b >> c
        assert result is c

    w: Workflow = chain
    assert w.steps["b"].depends_on == ("a",)
    assert w.steps["c"].depends_on == ("b",)


def test_fan_out_and_join() -> None:
    @workflow
    def diamond() -> None:
        a = http("a", url="http://svc.test/")
        b = http("b", url="http://svc.test/")
        c = http("c", url="http://svc.test/")
        d = http("d", url="http://svc.test/")
        out = a >> [b, c]
        assert out == [b, c]
        joined = [b, c] >> d
        assert joined is d

    w: Workflow = diamond
    assert w.steps["b"].depends_on == ("a",)
    assert w.steps["c"].depends_on == ("a",)
    assert w.steps["d"].depends_on == ("b", "c")
    assert w.roots == ("a",)


def test_after_by_name_and_no_duplicate_edges() -> None:
    @workflow
    def flow() -> None:
        a = http("a", url="http://svc.test/")
        b = http("b", url="http://svc.test/").after("a")
        a >> b

    assert flow.steps["b"].depends_on == ("a",)


def test_task_registers_function_keyed_module_qualname() -> None:
    @workflow
    def flow() -> None:
        @task(args={"message": "{{ input.text }}"}, retries=2)
        def upper(message: str) -> str:
            return message.upper()

        http("first", url="http://svc.test/") >> upper

    w: Workflow = flow
    action = w.steps["upper"].action
    assert isinstance(action, PythonCall)
    key = f"{__name__}:test_task_registers_function_keyed_module_qualname.<locals>.flow.<locals>.upper"
    assert action.function == key
    assert set(w.functions) == {key}
    assert w.functions[key]("abc") == "ABC"
    assert action.args is not None and action.args.source == {"message": "{{ input.text }}"}
    assert w.steps["upper"].retry.retries == 2
    assert w.steps["upper"].depends_on == ("first",)


def test_task_called_with_function_and_name() -> None:
    @workflow
    def flow() -> None:
        task(shout, name="loud", args={"message": "{{ input.m }}"})

    w: Workflow = flow
    assert list(w.steps) == ["loud"]
    assert w.functions == {f"{__name__}:shout": shout}


def test_branch_and_fail() -> None:
    @workflow
    def flow() -> None:
        check = http("check", url="http://svc.test/")
        ok = http("ok", url="http://svc.test/")
        bad = fail("bad", "refused {{ input.id }}")
        check >> branch(
            "decide", cases=[("{{ steps.check.output.status == 200 }}", ok)], otherwise=bad
        )

    w: Workflow = flow
    action = w.steps["decide"].action
    assert isinstance(action, Branch)
    assert [then for _, then in action.cases] == [("ok",)]
    assert action.otherwise == ("bad",)
    assert w.steps["decide"].depends_on == ("check",)
    assert w.steps["ok"].depends_on == ("decide",)
    assert w.steps["bad"].depends_on == ("decide",)
    fail_action = w.steps["bad"].action
    assert isinstance(fail_action, Fail)
    assert fail_action.message.source == "refused {{ input.id }}"


def test_branch_targets_by_name_and_lists() -> None:
    @workflow
    def flow() -> None:
        http("x", url="http://svc.test/")
        http("y", url="http://svc.test/")
        branch("b", cases=[("{{ true }}", ["x", "y"])])

    action = flow.steps["b"].action
    assert isinstance(action, Branch)
    assert action.targets == ("x", "y")
    assert action.otherwise == ()


def test_map_over_http() -> None:
    @workflow
    def flow() -> None:
        map_over(
            "labels",
            "{{ input.items }}",
            http={"service": "upper", "json": {"m": "{{ item }}"}},
            concurrency=3,
        )

    action = flow.steps["labels"].action
    assert isinstance(action, MapOver)
    assert action.concurrency == 3
    assert isinstance(action.action, HttpCall)
    assert action.action.service == "upper"


def test_map_over_function_registers_it() -> None:
    @workflow
    def flow() -> None:
        map_over("loud", "{{ input.items }}", function=shout, args={"message": "{{ item }}"})

    w: Workflow = flow
    action = w.steps["loud"].action
    assert isinstance(action, MapOver)
    assert isinstance(action.action, PythonCall)
    assert action.action.function == f"{__name__}:shout"
    assert w.functions[f"{__name__}:shout"] is shout


def test_map_over_needs_exactly_one_of_http_or_function() -> None:
    with pytest.raises(LegatoError, match="needs exactly one of http= or function="):

        @workflow
        def neither() -> None:
            map_over("m", "{{ [] }}")

    with pytest.raises(LegatoError, match="needs exactly one of http= or function="):

        @workflow
        def both() -> None:
            map_over("m", "{{ [] }}", http={"url": "http://svc.test/"}, function=shout)


def test_timedelta_durations() -> None:
    @workflow(
        timeout=timedelta(minutes=5),
        defaults={"retries": 1, "retry_delay": timedelta(milliseconds=250)},
    )
    def flow() -> None:
        http(
            "a",
            url="http://svc.test/",
            timeout=timedelta(seconds=3),
            retry_delay=timedelta(seconds=2),
            retry={"max_delay": timedelta(minutes=1)},
        )
        http("b", url="http://svc.test/")

    w: Workflow = flow
    assert w.timeout == 300.0
    assert w.steps["a"].timeout == 3.0
    assert w.steps["a"].retry.delay == 2.0
    assert w.steps["a"].retry.max_delay == 60.0
    assert w.steps["a"].retry.retries == 1
    assert w.steps["b"].retry.delay == 0.25
    assert w.spec["timeout"] == 300.0


def test_step_options() -> None:
    @workflow
    def flow() -> None:
        a = http("a", url="http://svc.test/")
        b = http("b", url="http://svc.test/", trigger="all_done", optional=True, description="d")
        a >> b

    step = flow.steps["b"]
    assert step.trigger == "all_done"
    assert step.optional is True
    assert step.description == "d"


def test_unknown_step_option_rejected() -> None:
    with pytest.raises(LegatoError, match="unknown step option 'colour'"):

        @workflow
        def flow() -> None:
            http("a", url="http://svc.test/", colour="red")


def test_duplicate_step_names_rejected() -> None:
    with pytest.raises(LegatoError, match="two steps are named 'a'"):

        @workflow
        def flow() -> None:
            http("a", url="http://svc.test/")
            http("a", url="http://svc.test/other")


def test_step_outside_workflow_raises() -> None:
    with pytest.raises(LegatoError, match="must be declared inside a @workflow function"):
        http("lonely", url="http://svc.test/")
    with pytest.raises(LegatoError, match="must be declared inside a @workflow function"):
        fail("f")
    with pytest.raises(LegatoError, match="must be declared inside a @workflow function"):
        task(shout)


def test_builder_is_reset_after_a_workflow_even_when_it_raises() -> None:
    with pytest.raises(RuntimeError):

        @workflow
        def broken() -> None:
            http("a", url="http://svc.test/")
            raise RuntimeError("boom")

    with pytest.raises(LegatoError, match="inside a @workflow"):
        http("after", url="http://svc.test/")


def test_invalid_dsl_workflow_raises_definition_error() -> None:
    with pytest.raises(DefinitionError) as info:

        @workflow
        def flow() -> None:
            a = http("a", url="http://svc.test/", json="{{ steps.b.output }}")
            http("b", url="http://svc.test/") >> a >> http("c", url="http://svc.test/", trigger="x")

    assert [p.path for p in info.value.problems] == ["steps.c.trigger"]


def test_dsl_cycle_is_reported() -> None:
    with pytest.raises(DefinitionError, match="cycle"):

        @workflow
        def flow() -> None:
            a = http("a", url="http://svc.test/")
            b = http("b", url="http://svc.test/")
            a >> b >> a


def test_dsl_equals_plain_form() -> None:
    from legato.model import build_workflow

    @workflow(output="{{ steps.b.output }}")
    def same() -> None:
        http("a", url="http://svc.test/a") >> http("b", url="http://svc.test/b", retries=1)

    plain: dict[str, Any] = {
        "name": "same",
        "output": "{{ steps.b.output }}",
        "steps": {
            "a": {"http": {"url": "http://svc.test/a"}},
            "b": {
                "http": {"url": "http://svc.test/b"},
                "retry": {"retries": 1},
                "depends_on": ["a"],
            },
        },
    }
    w: Workflow = same
    assert w.spec == plain
    assert w.digest == build_workflow(plain).digest


def test_step_node_repr() -> None:
    nodes: list[StepNode] = []

    @workflow
    def flow() -> None:
        nodes.append(http("a", url="http://svc.test/"))

    assert repr(nodes[0]) == "<step a>"


def test_an_http_step_may_say_whether_it_follows_redirects() -> None:
    @workflow()
    def hops() -> None:
        http("a", url="http://svc.test/", follow_redirects=True)
        http("b", url="http://svc.test/")

    w: Workflow = hops
    a, b = w.steps["a"].action, w.steps["b"].action
    assert isinstance(a, HttpCall) and isinstance(b, HttpCall)
    assert (a.follow_redirects, b.follow_redirects) == (True, None)
