"""build_workflow: every validation rule reports its exact path, and valid definitions build the model."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from legato.errors import DefinitionError, Problem
from legato.model import build_workflow
from legato.model.fields import Field
from legato.model.workflow import (
    DEFAULT_RETRY,
    DEFAULT_RETRY_ON,
    Branch,
    Fail,
    HttpCall,
    MapOver,
    PythonCall,
    RetryPolicy,
)

URL = "http://svc.test/x"


def http(**extra: Any) -> dict[str, Any]:
    return {"http": {"url": URL}, **extra}


def wf(steps: Any, **top: Any) -> dict[str, Any]:
    return {"name": "w", "steps": steps, **top}


def problems(data: Any, **kw: Any) -> dict[str, str]:
    """Build `data`, expect it refused, return {path: message}."""
    with pytest.raises(DefinitionError) as info:
        build_workflow(data, **kw)
    found = info.value.problems
    assert found, "a DefinitionError must list its problems"
    return {p.path: p.message for p in found}


# -- valid definitions ------------------------------------------------------------------------------


def test_minimal_workflow_builds() -> None:
    w = build_workflow(wf({"a": http()}))
    assert w.name == "w"
    assert list(w.steps) == ["a"]
    assert w.roots == ("a",)
    step = w.steps["a"]
    assert step.kind == "http"
    assert isinstance(step.action, HttpCall)
    assert step.action.method == "GET"
    assert step.action.url is not None and step.action.url.source == URL
    assert step.trigger == "all_succeeded"
    assert step.retry == DEFAULT_RETRY
    assert step.timeout is None
    assert step.optional is False


def test_http_method_defaults_to_post_with_json_and_is_upper_cased() -> None:
    w = build_workflow(
        wf(
            {
                "a": {"http": {"url": URL, "json": {"x": 1}}},
                "b": {"http": {"url": URL, "body": "raw"}},
                "c": {"http": {"url": URL, "method": "put"}},
            }
        )
    )
    methods = {n: s.action.method for n, s in w.steps.items() if isinstance(s.action, HttpCall)}
    assert methods == {"a": "POST", "b": "POST", "c": "PUT"}


def test_topological_order_of_steps() -> None:
    w = build_workflow(
        wf(
            {
                "d": {**http(), "depends_on": ["b", "c"]},
                "c": {**http(), "depends_on": "a"},
                "b": {**http(), "depends_on": "a"},
                "a": http(),
            }
        )
    )
    order = list(w.steps)
    assert order[0] == "a"
    assert order[-1] == "d"
    assert set(order) == {"a", "b", "c", "d"}
    for name, step in w.steps.items():
        for dep in step.depends_on:
            assert order.index(dep) < order.index(name)
    assert w.roots == ("a",)
    assert sorted(w.downstream["a"]) == ["b", "c"]
    assert w.downstream["b"] == ("d",)
    assert w.downstream["d"] == ()


def test_depends_on_accepts_one_bare_name() -> None:
    w = build_workflow(wf({"a": http(), "b": {**http(), "depends_on": "a"}}))
    assert w.steps["b"].depends_on == ("a",)


def test_multiple_roots() -> None:
    w = build_workflow(wf({"a": http(), "b": http(), "c": {**http(), "depends_on": ["a", "b"]}}))
    assert set(w.roots) == {"a", "b"}
    assert w.downstream["a"] == ("c",)
    assert w.downstream["b"] == ("c",)


def test_steps_as_a_list_keep_their_names() -> None:
    w = build_workflow(
        {
            "name": "w",
            "steps": [{"name": "a", **http()}, {"name": "b", "depends_on": "a", **http()}],
        }
    )
    assert list(w.steps) == ["a", "b"]
    assert w.spec["steps"] == {"a": http(), "b": {"depends_on": "a", **http()}}


def test_step_without_name_in_list_form() -> None:
    assert problems({"name": "w", "steps": [{"name": "a", **http()}, http()]}) == {
        "steps[1].name": "is required"
    }


def test_spec_is_a_copy_of_the_data_and_digest_is_stable() -> None:
    data = wf({"a": http()})
    w = build_workflow(data)
    assert w.spec == data
    assert w.spec is not data
    data["steps"]["a"]["http"]["url"] = "http://other.test/"
    assert w.spec["steps"]["a"]["http"]["url"] == URL
    w2 = build_workflow(wf({"a": http()}))
    assert w.digest == w2.digest
    assert len(w.digest) == 64
    assert w.to_dict() is w.spec


def test_digest_changes_with_definition() -> None:
    a = build_workflow(wf({"a": http()}))
    b = build_workflow(wf({"a": http(optional=True)}))
    assert a.digest != b.digest


def test_build_does_not_mutate_list_form_data() -> None:
    data = {"name": "w", "steps": [{"name": "a", **http()}]}
    before = copy.deepcopy(data)
    build_workflow(data)
    assert data == before


def test_build_does_not_mutate_inputs_mapping() -> None:
    inputs: dict[str, Any] = {"x": {"type": "string"}}
    build_workflow(wf({"a": http()}, inputs=inputs))
    assert inputs == {"x": {"type": "string"}}


def test_inputs_and_outputs_fields() -> None:
    w = build_workflow(
        wf(
            {"a": http()},
            inputs=[
                {"name": "x", "type": "string"},
                {"name": "n", "type": "integer", "default": 3},
            ],
            outputs={"y": "number"},
        )
    )
    assert w.inputs == (Field("x", "string"), Field("n", "integer", required=False, default=3))
    assert w.outputs == (Field("y", "number"),)


def test_bad_field_type() -> None:
    assert problems(wf({"a": http()}, inputs={"x": "text"})) == {
        "inputs.x.type": "'text' is not a type: must be one of string, integer, number, boolean, object, array, any"
        " (or their short names int, float, str, bool, dict, list)"
    }


def test_duplicate_input_field() -> None:
    assert problems(wf({"a": http()}, inputs=[{"name": "x"}, {"name": "x"}])) == {
        "inputs[1].name": "duplicate field 'x'"
    }


def test_timeouts() -> None:
    w = build_workflow(
        wf({"a": http(timeout="2s"), "b": http()}, timeout="1h", defaults={"timeout": "10s"})
    )
    assert w.timeout == 3600.0
    assert w.steps["a"].timeout == 2.0
    assert w.steps["b"].timeout == 10.0


def test_step_timeout_must_be_positive() -> None:
    assert problems(wf({"a": http(timeout=0)})) == {"steps.a.timeout": "must be positive"}


def test_workflow_timeout_must_be_positive() -> None:
    assert "timeout" in problems(wf({"a": http()}, timeout=0))


def test_optional_and_description() -> None:
    w = build_workflow(wf({"a": http(optional=True, description="maybe")}, description="doc"))
    assert w.steps["a"].optional is True
    assert w.steps["a"].description == "maybe"
    assert w.description == "doc"


def test_functions_are_kept() -> None:
    def f() -> int:
        return 1

    w = build_workflow(wf({"a": {"python": "mod:f"}}), functions={"mod:f": f})
    assert w.functions == {"mod:f": f}
    assert isinstance(w.steps["a"].action, PythonCall)
    assert w.steps["a"].action.function == "mod:f"


def test_python_step_full_form() -> None:
    w = build_workflow(
        wf({"a": {"python": {"function": "pkg.mod:fn", "args": {"x": "{{ input.x }}"}}}})
    )
    action = w.steps["a"].action
    assert isinstance(action, PythonCall)
    assert action.args is not None and action.args.source == {"x": "{{ input.x }}"}


def test_python_function_path_must_be_an_import_path() -> None:
    assert problems(wf({"a": {"python": "not a path"}})) == {
        "steps.a.python.function": "must be an import path such as 'package.module:function'"
    }


def test_python_args_must_be_a_mapping() -> None:
    assert problems(wf({"a": {"python": {"function": "m:f", "args": ["x"]}}})) == {
        "steps.a.python.args": "must be a mapping of argument name to value"
    }


def test_fail_step_short_and_long_form() -> None:
    w = build_workflow(wf({"a": {"fail": "nope {{ input.x }}"}, "b": {"fail": {"message": "m"}}}))
    a, b = w.steps["a"].action, w.steps["b"].action
    assert isinstance(a, Fail) and a.message.source == "nope {{ input.x }}"
    assert isinstance(b, Fail) and b.message.source == "m"


def test_fail_step_needs_a_message() -> None:
    assert problems(wf({"a": {"fail": {}}})) == {"steps.a.fail.message": "is required"}


def test_map_step() -> None:
    w = build_workflow(
        wf(
            {
                "m": {
                    "map": {
                        "over": "{{ input.items }}",
                        "concurrency": 3,
                        "step": {"http": {"url": URL, "json": "{{ item }}"}},
                    }
                }
            }
        )
    )
    action = w.steps["m"].action
    assert isinstance(action, MapOver)
    assert action.concurrency == 3
    assert isinstance(action.action, HttpCall)
    assert action.over.source == "{{ input.items }}"


def test_map_concurrency_defaults_to_ten() -> None:
    w = build_workflow(wf({"m": {"map": {"over": "{{ [1] }}", "step": {"python": "m:f"}}}}))
    action = w.steps["m"].action
    assert isinstance(action, MapOver)
    assert action.concurrency == 10


def test_map_problems() -> None:
    assert problems(wf({"m": {"map": {"concurrency": 0}}})) == {
        "steps.m.map.over": "is required",
        "steps.m.map.concurrency": "must be at least 1",
        "steps.m.map.step": "is required: {http: ...} or {python: ...} run for each item",
    }


def test_map_inner_step_must_be_http_or_python() -> None:
    assert problems(wf({"m": {"map": {"over": "{{ [1] }}", "step": {"fail": "x"}}}})) == {
        "steps.m.map.step": "must hold exactly one of http or python"
    }


def test_map_inner_step_problems_have_nested_paths() -> None:
    assert problems(
        wf({"m": {"map": {"over": "{{ [1] }}", "step": {"http": {"url": URL, "verb": 1}}}}})
    ) == {"steps.m.map.step.http.verb": "is not a known field"}


# -- retry policy -------------------------------------------------------------------------------------


def test_defaults_flow_into_every_steps_retry_policy() -> None:
    w = build_workflow(
        wf(
            {"a": http(), "b": http()},
            defaults={
                "retries": 3,
                "retry_delay": "200ms",
                "retry_backoff": 3,
                "retry_max_delay": "1m",
                "retry_jitter": False,
                "retry_on": ["5xx", "4xx"],
            },
        )
    )
    expected = RetryPolicy(
        retries=3,
        delay=0.2,
        backoff=3.0,
        max_delay=60.0,
        jitter=False,
        on=frozenset({"5xx", "4xx"}),
    )
    assert w.steps["a"].retry == expected
    assert w.steps["b"].retry == expected


def test_step_retry_overrides_only_what_it_names() -> None:
    w = build_workflow(
        wf(
            {"a": http(retry={"retries": 5, "delay": "1s"}), "b": http()},
            defaults={"retries": 2, "retry_delay": "200ms", "retry_backoff": 4},
        )
    )
    assert w.steps["a"].retry == RetryPolicy(retries=5, delay=1.0, backoff=4.0)
    assert w.steps["b"].retry == RetryPolicy(retries=2, delay=0.2, backoff=4.0)


def test_step_retry_as_a_number_is_the_retry_count() -> None:
    w = build_workflow(wf({"a": http(retry=4)}))
    assert w.steps["a"].retry.retries == 4
    assert w.steps["a"].retry.delay == RetryPolicy().delay


def test_retry_default_on_kinds() -> None:
    w = build_workflow(wf({"a": http()}))
    assert w.steps["a"].retry.on == DEFAULT_RETRY_ON
    assert "4xx" not in DEFAULT_RETRY_ON
    assert "5xx" in DEFAULT_RETRY_ON


def test_retry_problems_have_exact_paths() -> None:
    assert problems(
        wf(
            {
                "charge": http(
                    retry={
                        "retries": -1,
                        "delay": "soon",
                        "backoff": 0.5,
                        "on": ["5xx", "teapot"],
                        "jitter": "yes",
                        "x": 1,
                    }
                )
            }
        )
    ) == {
        "steps.charge.retry.retries": "must not be negative",
        "steps.charge.retry.delay": "must be a duration such as 500ms, 30s, 5m, 1h or a number of seconds",
        "steps.charge.retry.backoff": "must be from 1 to 100",
        "steps.charge.retry.on": "unknown failure kind 'teapot'; known: network, timeout, 5xx, 429, 4xx, "
        "status, exception, input, output, template, config, callback, child, limit",
        "steps.charge.retry.jitter": "must be a boolean",
        "steps.charge.retry.x": "is not a known field",
    }


def test_retry_must_be_a_mapping_or_count() -> None:
    assert problems(wf({"a": http(retry=True)})) == {
        "steps.a.retry": "must be a number of retries or a mapping {retries, delay, ...}"
    }


def test_defaults_problems_have_exact_paths() -> None:
    assert problems(
        wf({"a": http()}, defaults={"retries": "3", "retry_delay": "x", "bogus": 1})
    ) == {
        "defaults.retries": "must be an integer",
        "defaults.retry_delay": "must be a duration such as 500ms, 30s, 5m, 1h or a number of seconds",
        "defaults.bogus": "is not a known field",
    }


def test_retries_refuses_a_boolean() -> None:
    assert problems(wf({"a": http(retry={"retries": True})})) == {
        "steps.a.retry.retries": "must be an integer"
    }


def test_retry_policy_delay_for() -> None:
    p = RetryPolicy(retries=5, delay=1.0, backoff=2.0, max_delay=5.0, jitter=False)
    assert [p.delay_for(n, 0.9) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    j = RetryPolicy(delay=4.0, backoff=2.0, jitter=True)
    assert j.delay_for(1, 0.0) == 2.0
    assert j.delay_for(2, 0.0) == 4.0
    assert j.delay_for(1, 0.5) == 3.0
    assert j.delay_for(1, 0.999) < 4.0


def test_retry_policy_should_retry() -> None:
    p = RetryPolicy(retries=2)
    assert p.should_retry("5xx", 1)
    assert p.should_retry("5xx", 2)
    assert not p.should_retry("5xx", 3)
    assert not p.should_retry("4xx", 1)


# -- success codes ------------------------------------------------------------------------------------


def test_success_codes_classes_and_single_codes() -> None:
    w = build_workflow(
        wf(
            {
                "a": {"http": {"url": URL, "success": ["2xx", 404]}},
                "b": {"http": {"url": URL, "success": 404}},
                "c": {"http": {"url": URL, "success": "3xx"}},
                "d": http(),
            }
        )
    )
    a, b, c, d = (w.steps[n].action for n in "abcd")
    assert isinstance(a, HttpCall) and isinstance(b, HttpCall)
    assert isinstance(c, HttpCall) and isinstance(d, HttpCall)
    assert a.success == ((200, 299), (404, 404))
    assert a.is_success(200) and a.is_success(299) and a.is_success(404)
    assert not a.is_success(300) and not a.is_success(403) and not a.is_success(500)
    assert b.success == ((404, 404),)
    assert b.is_success(404) and not b.is_success(200)
    assert c.success == ((300, 399),)
    assert d.success == ((200, 299),)
    assert d.is_success(204) and not d.is_success(302)


def test_bad_success_codes() -> None:
    msg = "must be a status code (100-599) or a class such as '2xx'"
    assert problems(
        wf({"a": {"http": {"url": URL, "success": ["2xx", 99, "6xx", True, 600]}}})
    ) == {
        "steps.a.http.success[1]": msg,
        "steps.a.http.success[2]": msg,
        "steps.a.http.success[3]": msg,
        "steps.a.http.success[4]": msg,
    }


def test_empty_success_list_is_refused() -> None:
    assert "steps.a.http.success" in problems(wf({"a": {"http": {"url": URL, "success": []}}}))


# -- step shape -------------------------------------------------------------------------------------


def test_exactly_one_step_kind_none() -> None:
    assert problems(wf({"a": {"depends_on": []}})) == {
        "steps.a": "needs exactly one of http, python, branch, map, fail, wait, listen, workflow, emit"
    }


def test_exactly_one_step_kind_two() -> None:
    assert problems(wf({"a": {"http": {"url": URL}, "fail": "x"}})) == {
        "steps.a": "needs exactly one of http, python, branch, map, fail, wait, listen, workflow, emit (found http, fail)"
    }


def test_unknown_fields_everywhere() -> None:
    assert problems(
        {
            "name": "w",
            "colour": "red",
            "steps": {"a": {"http": {"url": URL, "verb": "x"}, "when": 1}},
        }
    ) == {
        "colour": "is not a known field",
        "steps.a.http.verb": "is not a known field",
        "steps.a.when": "is not a known field",
    }


def test_http_needs_exactly_one_of_service_or_url() -> None:
    msg = "needs exactly one of service (a directory name) or url"
    assert problems(wf({"a": {"http": {}}, "b": {"http": {"service": "s", "url": URL}}})) == {
        "steps.a.http": msg,
        "steps.b.http": msg,
    }


def test_http_json_and_body_exclusive_and_method_checked() -> None:
    assert problems(
        wf({"a": {"http": {"url": URL, "json": {}, "body": "x", "method": "FETCH"}}})
    ) == {
        "steps.a.http.body": "cannot be given with json",
        "steps.a.http.method": "must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
    }


def test_bad_trigger() -> None:
    assert problems(wf({"a": http(trigger="whenever")})) == {
        "steps.a.trigger": "must be one of all_succeeded, all_done, one_succeeded, none_failed"
    }


@pytest.mark.parametrize("bad", ["1a", "a-b", "a b", "a.b", "", "x" * 129])
def test_bad_step_name(bad: str) -> None:
    assert problems(wf({bad: http()})) == {
        f"steps.{bad}": "a step name must be a letter or '_' then letters, digits, '_'"
    }


def test_duplicate_step_name_in_list_form() -> None:
    assert problems({"name": "w", "steps": [{"name": "a", **http()}, {"name": "a", **http()}]}) == {
        "steps.a": "duplicate step name"
    }


def test_depends_on_listing_a_step_twice() -> None:
    assert problems(wf({"a": http(), "b": http(depends_on=["a", "a"])})) == {
        "steps.b.depends_on": "lists a step twice"
    }


def test_depends_on_must_be_names() -> None:
    assert problems(wf({"a": http(depends_on=[1])})) == {
        "steps.a.depends_on": "must be a name or a list of names"
    }


@pytest.mark.parametrize("bad", ["-w", "", "a b", "a/b"])
def test_bad_workflow_name(bad: str) -> None:
    assert problems(wf({"a": http()}) | {"name": bad}) == {
        "name": "must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
    }


def test_name_and_steps_required() -> None:
    assert problems({}) == {
        "name": "is required",
        "steps": "is required: a mapping of step name to step",
    }


def test_no_steps() -> None:
    assert problems(wf({})) == {"steps": "must hold at least one step"}


def test_definition_must_be_a_mapping() -> None:
    assert problems(["not", "a", "mapping"]) == {"": "must be a mapping"}


def test_step_must_be_a_mapping() -> None:
    assert problems(wf({"a": "http"})) == {"steps.a": "must be a mapping"}


# -- graph --------------------------------------------------------------------------------------------


def test_unknown_depends_on() -> None:
    assert problems(wf({"a": http(), "b": http(depends_on=["a", "ghost"])})) == {
        "steps.b.depends_on[1]": "unknown step 'ghost'"
    }


def test_self_dependency() -> None:
    assert problems(wf({"a": http(depends_on="a")})) == {
        "steps.a.depends_on[0]": "a step cannot depend on itself"
    }


def test_two_step_cycle() -> None:
    assert problems(wf({"a": http(depends_on="b"), "b": http(depends_on="a")})) == {
        "steps": "the steps form a cycle: a -> b -> a"
    }


def test_three_step_cycle_names_each_step_in_run_order() -> None:
    # b runs after a, c after b, a after c.
    found = problems(
        wf({"a": http(depends_on="c"), "b": http(depends_on="a"), "c": http(depends_on="b")})
    )
    assert found == {"steps": "the steps form a cycle: a -> b -> c -> a"}


def test_cycle_reported_with_steps_downstream_of_it() -> None:
    found = problems(
        wf(
            {
                "root": http(),
                "a": http(depends_on=["root", "b"]),
                "b": http(depends_on="a"),
                "after": http(depends_on="a"),
            }
        )
    )
    assert set(found) == {"steps"}
    message = found["steps"]
    assert message.startswith("the steps form a cycle: ")
    chain = message.removeprefix("the steps form a cycle: ").split(" -> ")
    assert chain[0] == chain[-1]
    assert set(chain) == {"a", "b"}


def test_unknown_service_when_directory_given() -> None:
    data = wf(
        {
            "a": {"http": {"service": "stock"}},
            "b": {"http": {"service": "ghost"}},
            "m": {"map": {"over": "{{ [1] }}", "step": {"http": {"service": "phantom"}}}},
        }
    )
    assert problems(data, services=["stock"]) == {
        "steps.b.http.service": "unknown service 'ghost'",
        "steps.m.map.step.http.service": "unknown service 'phantom'",
    }


def test_unknown_service_not_checked_without_directory() -> None:
    w = build_workflow(wf({"b": {"http": {"service": "ghost"}}}))
    action = w.steps["b"].action
    assert isinstance(action, HttpCall) and action.service == "ghost"


# -- templates ----------------------------------------------------------------------------------------


def test_template_referring_to_a_non_ancestor_is_refused() -> None:
    found = problems(
        wf(
            {
                "a": http(),
                "b": {"http": {"url": URL, "json": {"x": "{{ steps.c.output }}"}}},
                "c": http(depends_on="a"),
            }
        )
    )
    assert found == {
        "steps.b.http.json": "refers to step 'c', which does not run before 'b' (add it to depends_on)"
    }


def test_template_referring_to_an_indirect_ancestor_is_allowed() -> None:
    w = build_workflow(
        wf(
            {
                "a": http(),
                "b": http(depends_on="a"),
                "c": {"http": {"url": URL, "json": "{{ steps.a.output }}"}, "depends_on": "b"},
            }
        )
    )
    assert list(w.steps) == ["a", "b", "c"]


def test_template_referring_to_an_unknown_step() -> None:
    assert problems(wf({"a": {"http": {"url": "{{ steps.nope.output }}"}}})) == {
        "steps.a.http.url": "refers to unknown step 'nope'"
    }


def test_references_checked_in_every_template_of_every_kind() -> None:
    found = problems(
        wf(
            {
                "late": http(),
                "h": {
                    "http": {
                        "url": URL,
                        "path": "{{ steps.late.x }}",
                        "query": {"q": "{{ steps.late.x }}"},
                        "headers": {"h": "{{ steps.late.x }}"},
                    }
                },
                "p": {"python": {"function": "m:f", "args": {"a": "{{ steps.late.x }}"}}},
                "b": {"branch": {"cases": [{"when": "{{ steps.late.x }}", "then": "t"}]}},
                "t": http(),
                "m": {
                    "map": {
                        "over": "{{ steps.late.x }}",
                        "step": {"http": {"url": URL, "json": "{{ steps.late.y }}"}},
                    }
                },
                "f": {"fail": "{{ steps.late.x }}"},
            }
        )
    )
    assert set(found) == {
        "steps.h.http.path",
        "steps.h.http.query",
        "steps.h.http.headers",
        "steps.p.python.args",
        "steps.b.branch.cases[0].when",
        "steps.m.map.over",
        "steps.m.map.step.http.json",
        "steps.f.fail.message",
    }
    assert all("add it to depends_on" in m for m in found.values())


def test_run_output_may_refer_to_any_step_but_not_unknown_ones() -> None:
    w = build_workflow(
        wf({"a": http(), "b": http()}, output="{{ [steps.a.output, steps.b.output] }}")
    )
    assert w.output is not None and w.output.references == frozenset({"a", "b"})
    assert problems(wf({"a": http()}, output="{{ steps.zz }}")) == {
        "output": "refers to unknown step 'zz'"
    }


def test_bad_expression_syntax_reported_with_path() -> None:
    assert problems(wf({"a": {"http": {"url": URL, "json": {"x": "{{ 1 + }}"}}}})) == {
        "steps.a.http.json": "bad expression '{{ 1 + }}': unexpected 'end of print statement'"
    }


def test_bad_template_syntax_in_output() -> None:
    found = problems(wf({"a": http()}, output="result: {% if %}"))
    assert set(found) == {"output"}
    assert found["output"].startswith("bad template 'result: {% if %}'")


# -- branches -----------------------------------------------------------------------------------------


def test_branch_targets_are_auto_linked_as_dependencies() -> None:
    w = build_workflow(
        wf(
            {
                "gate": {
                    "branch": {
                        "cases": [{"when": "{{ input.ok }}", "then": ["yes", "also"]}],
                        "otherwise": "no",
                    }
                },
                "yes": http(),
                "also": http(depends_on="pre"),
                "no": http(),
                "pre": http(),
            }
        )
    )
    assert w.steps["yes"].depends_on == ("gate",)
    assert w.steps["no"].depends_on == ("gate",)
    assert w.steps["also"].depends_on == ("pre", "gate")
    assert set(w.roots) == {"gate", "pre"}
    order = list(w.steps)
    assert order.index("gate") < order.index("yes")
    assert order.index("gate") < order.index("no")
    branch = w.steps["gate"].action
    assert isinstance(branch, Branch)
    assert branch.targets == ("yes", "also", "no")
    assert branch.otherwise == ("no",)


def test_branch_target_already_depending_is_not_duplicated() -> None:
    w = build_workflow(
        wf(
            {
                "gate": {"branch": {"cases": [{"when": "{{ true }}", "then": "yes"}]}},
                "yes": http(depends_on="gate"),
            }
        )
    )
    assert w.steps["yes"].depends_on == ("gate",)


def test_branch_unknown_target() -> None:
    assert problems(
        wf({"gate": {"branch": {"cases": [{"when": "{{ true }}", "then": "ghost"}]}}})
    ) == {"steps.gate.branch": "unknown step 'ghost'"}


def test_branch_target_that_runs_before_it_makes_a_cycle() -> None:
    found = problems(
        wf(
            {
                "a": http(),
                "gate": {
                    "depends_on": "a",
                    "branch": {"cases": [{"when": "{{ true }}", "then": "a"}]},
                },
            }
        )
    )
    assert set(found) == {"steps"}
    assert found["steps"].startswith("the steps form a cycle:")


def test_branch_needs_cases_and_each_case_needs_when_and_then() -> None:
    assert problems(wf({"g": {"branch": {}}})) == {
        "steps.g.branch.cases": "is required: a list of {when, then}"
    }
    assert problems(wf({"g": {"branch": {"cases": [{"if": "x"}]}}})) == {
        "steps.g.branch.cases[0].when": "is required",
        "steps.g.branch.cases[0].then": "is required: the steps to run when this case holds",
        "steps.g.branch.cases[0].if": "is not a known field",
    }


def test_branch_with_only_otherwise_is_valid() -> None:
    w = build_workflow(wf({"g": {"branch": {"otherwise": "x"}}, "x": http()}))
    assert w.steps["x"].depends_on == ("g",)


# -- many problems at once ------------------------------------------------------------------------------


def test_multiple_problems_reported_together() -> None:
    with pytest.raises(DefinitionError) as info:
        build_workflow(
            {
                "name": "bad name!",
                "timeout": "forever",
                "steps": {
                    "charge": http(retry={"delay": "later"}),
                    "mail": {"http": {"url": URL, "json": "{{ ( }}"}, "trigger": "sometimes"},
                    "both": {"http": {"url": URL}, "python": "m:f"},
                },
            }
        )
    err = info.value
    paths = [p.path for p in err.problems]
    assert paths == [
        "name",
        "timeout",
        "steps.charge.retry.delay",
        "steps.mail.http.json",
        "steps.mail.trigger",
        "steps.both",
    ]
    text = str(err)
    assert text.startswith("invalid definition:\n  ")
    for p in err.problems:
        assert f"  {p.path}: {p.message}" in text


def test_single_problem_message_is_one_line() -> None:
    with pytest.raises(DefinitionError) as info:
        build_workflow(wf({"a": http(depends_on="ghost")}))
    assert str(info.value) == "invalid definition: steps.a.depends_on[0]: unknown step 'ghost'"


def test_definition_error_to_dict() -> None:
    with pytest.raises(DefinitionError) as info:
        build_workflow(wf({"a": http(depends_on="ghost")}))
    assert info.value.to_dict() == {
        "error": "invalid_definition",
        "message": "invalid definition: steps.a.depends_on[0]: unknown step 'ghost'",
        "problems": [{"path": "steps.a.depends_on[0]", "message": "unknown step 'ghost'"}],
    }
    assert info.value.problems == [Problem("steps.a.depends_on[0]", "unknown step 'ghost'")]


@pytest.mark.parametrize("name", ["abc\n", "abc\n\n", "a b"])
def test_names_must_match_whole(name: str) -> None:
    assert "name" in problems(wf({"a": http()}, name=name))
    assert "steps" in " ".join(problems(wf({name: http()})))


def test_service_names_and_addresses_are_checked_whole() -> None:
    from legato.model.service import Service

    with pytest.raises(DefinitionError) as caught:
        Service.from_dict({"name": "svc\n", "base_url": "http://["})
    assert {p.path for p in caught.value.problems} == {"name", "base_url"}


def test_a_long_retry_budget_never_overflows_the_backoff() -> None:
    p = RetryPolicy(retries=10**6, delay=1.0, backoff=2.0, max_delay=60.0, jitter=False)
    assert p.delay_for(5000, 0.0) == 60.0
    q = RetryPolicy(retries=10, delay=0.001, backoff=100.0, max_delay=0.001, jitter=True)
    assert q.delay_for(400, 0.5) == pytest.approx(0.00075)


@pytest.mark.parametrize("backoff", [0.5, 101, float("nan")])
def test_backoff_is_bounded(backoff: float) -> None:
    found = problems(wf({"a": http(retry={"retries": 1, "backoff": backoff})}))
    assert found["steps.a.retry.backoff"] == "must be from 1 to 100"
