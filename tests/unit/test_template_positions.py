"""Every template error, in every position a definition has one, is a definition problem naming
the field (registration) or a step failure (run time), never another exception.

A small fuzz: each bad template in each position, then random strings made of template syntax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legato.engine.state import FAILED
from legato.errors import DefinitionError
from legato.expressions import TemplateError, compile_template
from legato.formats import load_definition
from legato.model.workflow import Workflow
from tests.unit.decider_support import Run, executes

URL = "http://svc.test/"


def _http(field: str) -> Callable[[str], dict[str, Any]]:
    def step(t: str) -> dict[str, Any]:
        call: dict[str, Any] = {"url": URL}
        if field == "url":
            call["url"] = t
        elif field in ("query", "headers", "json"):
            call[field] = {"k": t}
        else:
            call[field] = t
        return {"s": {"http": call}}

    return step


# Each position: (the field path a problem names, the steps holding the template `t`).
POSITIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "steps.s.http.url": _http("url"),
    "steps.s.http.path": _http("path"),
    "steps.s.http.query": _http("query"),
    "steps.s.http.headers": _http("headers"),
    "steps.s.http.json": _http("json"),
    "steps.s.http.body": _http("body"),
    "steps.s.http.poll.url": lambda t: {
        "s": {"http": {"url": URL, "poll": {"url": t}}, "timeout": "1m"}
    },
    "steps.s.python.args": lambda t: {"s": {"python": {"function": "m:f", "args": {"a": t}}}},
    "steps.s.branch.cases[0].when": lambda t: {
        "s": {"branch": {"cases": [{"when": t, "then": ["x"]}]}},
        "x": {"fail": "no"},
    },
    "steps.s.map.over": lambda t: {"s": {"map": {"over": t, "step": {"http": {"url": URL}}}}},
    "steps.s.map.step.http.json": lambda t: {
        "s": {"map": {"over": "{{ [1] }}", "step": {"http": {"url": URL, "json": {"k": t}}}}}
    },
    "steps.s.fail.message": lambda t: {"s": {"fail": {"message": t}}},
    "steps.s.wait.until": lambda t: {"s": {"wait": {"until": t}}},
    "steps.s.listen.key": lambda t: {"s": {"listen": {"event": "e", "key": t}}},
    "steps.s.workflow.input": lambda t: {"s": {"workflow": {"name": "c", "input": {"a": t}}}},
    "steps.s.emit.to": lambda t: {"s": {"emit": {"transport": "n", "to": t}}},
    "steps.s.emit.message": lambda t: {"s": {"emit": {"transport": "n", "to": "x", "message": t}}},
    "steps.s.emit.headers": lambda t: {
        "s": {"emit": {"transport": "n", "to": "x", "headers": {"h": t}}}
    },
}


def definition(position: str, template: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "w", "steps": POSITIONS[position](template)}
    if position == "steps.s.fail.message":  # any position: the workflow's output too
        doc["output"] = {"o": template}
    return doc


BAD_SYNTAX = [
    "{{ x | b64encode }}",
    "Basic {{ x | b64encode }}",
    "{{ x is nosuchtest }}",
    "a {{ x is nosuchtest }} b",
    "{{ x",
    "a {{ 1 + }} b",
    "{% endfor %}",
    "{% for %}",
    "{{ }}",
    "{% macro %}",
    "{{ x | default(' }}",
    # No templates to load: refused at registration, not failed in every run.
    "{% include 'x' %}",
    "a {% import 'x' as y %}{{ y }}",
    "{% from 'x' import y %}{{ y }}",
    "{% extends 'x' %}",
    "{% if true %}{% include 'x' %}{% endif %}",
]
BAD_AT_RUN_TIME = [
    "{{ 1 / 0 }}",
    "n={{ 1 // 0 }}",
    "{{ nosuch.thing }}",
    "{{ input.missing.deeper }}",
    "{{ 'a' * 100000000 }}",
    "{{ (10 ** 10000000) % 7 }}",
    "{{ range(100000000) | list }}",
    "{{ ''.__class__ }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ input | int(base=1) }}",
    "{{ 'x'.format_map(none) }}",
]


@pytest.mark.parametrize("template", BAD_SYNTAX)
@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_a_bad_template_is_a_problem_naming_its_field(position: str, template: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition(definition(position, template))
    paths = {p.path for p in caught.value.problems}
    assert position in paths or any(p.startswith(position) for p in paths), paths


def _run_to_end(wf: Workflow) -> Run:
    """Drive the run: steps that were dispatched answer with success, until nothing is left."""
    run = Run(wf, {"x": 1})
    d = run.start()
    for _ in range(10):
        sent = executes(d)
        if not sent:
            break
        for effect in sent:
            d = run.done(effect.step, {"ok": True}, attempt=effect.attempt)
    return run


@pytest.mark.parametrize("template", BAD_AT_RUN_TIME)
@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_a_template_failing_at_run_time_fails_its_step(position: str, template: str) -> None:
    try:
        wf = load_definition(definition(position, template)).workflow
    except DefinitionError:
        return  # refused at registration, naming the field: as good
    run = _run_to_end(wf)
    step = run.state.steps["s"]
    if step.status == FAILED and step.error is not None:
        assert step.error["kind"] in ("template", "limit", "fail"), step.error
    elif position == "steps.s.fail.message":
        assert step.status == FAILED
    # Whatever the step did, the run ended or waits, with no exception out of the decider.
    assert run.state.info.status in ("failed", "running", "succeeded")


WORDS = (
    "{{ }} {% %} {# #} x input . steps s | ( ) [ ] ' \" , 1 0 -1 10 ** * + ~ % / // for in "
    "endfor if endif set = macro endmacro range length join upper b64encode nosuch default "
    "tojson center replace format none true is defined __class__ \n é \x00"
)
FRAGMENTS = st.sampled_from([*WORDS.split(" "), " "])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAGMENTS, max_size=14).map("".join))
def test_random_templates_compile_and_render_or_say_why(source: str) -> None:
    try:
        template = compile_template(source)
    except TemplateError:
        return
    kind = "none"
    try:
        template.render({"input": {"x": 1}, "steps": {}})
    except TemplateError as exc:
        kind = exc.kind
    assert kind in ("none", "template", "limit")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(POSITIONS)),
    st.lists(FRAGMENTS, min_size=1, max_size=10).map("".join),
)
def test_random_templates_in_any_position_register_or_name_their_field(
    position: str, source: str
) -> None:
    try:
        wf = load_definition(definition(position, "{{" + source)).workflow
    except DefinitionError as exc:
        refused = exc.problems
    else:
        refused = []
        _run_to_end(wf)
    assert all(p.path for p in refused)
