"""Template bombs are refused at once with kind `limit`; ordinary templates render as before."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from legato.engine.render import render_request
from legato.engine.state import FAILED
from legato.expressions import TemplateError, compile_template
from legato.model.workflow import HttpCall
from legato.sandbox import LIMITS
from tests.unit.decider_support import Run, build, executes

S = "{% set s = 'a' * 1000000 %}"
BOMBS = [
    pytest.param("{{ (10 ** input.n) % 7 }}", "bits", id="power"),
    pytest.param("{{ 2 ** 100000 }}", "bits", id="power-literal"),
    pytest.param("{{ (2 ** 10000) * (2 ** 10000) }}", "bits", id="product"),
    pytest.param("{{ 'a' * 100000000 }}", "repeating", id="repeat"),
    pytest.param("x {{ 100000000 * 'a' }}", "repeating", id="repeat-left-in-text"),
    pytest.param("{{ [1] * 100000000 }}", "repeating", id="repeat-list"),
    pytest.param("{{ range(100000000) | list }}", "range", id="range"),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "operations",
        id="nested-loops",
    ),
    pytest.param(
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "operations",
        id="macro-fork",
    ),
    pytest.param("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurses", id="recursion"),
    pytest.param("{{ 'a' | center(100000000) }}", "center", id="center-filter"),
    pytest.param("{{ 'a'.ljust(100000000) }}", "ljust", id="ljust-method"),
    pytest.param("{{ '%100000000s' % 'a' }}", "width", id="percent-width"),
    pytest.param("{{ '%*s' % (100000000, 'a') }}", "width", id="percent-star"),
    pytest.param("{{ '{:>100000000}'.format(1) }}", "width", id="format-width"),
    pytest.param("{{ '%100000000s' | format('a') }}", "width", id="format-filter"),
    pytest.param(
        "{{ ('a' * 1000) | replace('a', 'a' * 1000) | replace('a', 'a' * 1000) }}",
        "replace",
        id="replace-chain",
    ),
    pytest.param("{{ range(100000) | join('a' * 1000) }}", "join", id="join-separator"),
    pytest.param("{% set s = 'a' * 1000000 %}{{ s ~ s }}", "output", id="concat"),
    pytest.param("{% set s = 'a' * 1000000 %}{{ s + s }}", "joining", id="plus"),
    pytest.param("{{ ('a\\n' * 500000) | indent(1000) }}", "indent", id="indent"),
    pytest.param("{{ ('\t' * 1000000).expandtabs(100) }}", "expandtabs", id="expandtabs"),
    pytest.param("{{ [1] | batch(100000000, 0) | list }}", "batch", id="batch-fill"),
    pytest.param("{{ ('a' * 1000000) | wordwrap(1) }}", "operations", id="wordwrap"),
    pytest.param("{{ 'a'.encode() * 100000000 }}", "repeating", id="repeat-bytes"),
    pytest.param(S + "{{ [s] * 1000 }}", "output", id="shared-list-in-text"),
    pytest.param(S + "{{ ([s] * 1000) | tojson }}", "tojson", id="shared-list-tojson"),
    pytest.param(S + "{{ ([s] * 1000) | upper }}", "upper", id="shared-list-upper"),
    pytest.param(S + "{{ ([s] * 1000) | join(',') }}", "join", id="shared-list-join"),
    pytest.param(S + "{{ [[s] * 1000] | join }}", "join", id="nested-list-join"),
    pytest.param(S + "{{ 'x' ~ ([s] * 1000) }}", "output", id="shared-list-concat"),
    pytest.param(S + "{{ ('{0}' * 100).format(s) }}", "formatting", id="format-fields"),
    pytest.param(S + "{{ ('%s' * 100) % ((s,) * 100) }}", "formatting", id="percent-fields"),
    pytest.param("{{ ('x.io ' * 200000) | urlize }}", "operations", id="urlize"),
    pytest.param("{{ range(100000) | groupby('real') | list }}", "operations", id="groupby"),
    pytest.param("{{ range(100000) | map('string') | list }}", "operations", id="map"),
]


@pytest.mark.parametrize(("source", "says"), BOMBS)
def test_bombs_are_refused_quickly_with_kind_limit(source: str, says: str) -> None:
    template = compile_template(source)
    started = time.perf_counter()
    with pytest.raises(TemplateError) as caught:
        template.render({"input": {"n": 10_000_000}})
    assert caught.value.kind == "limit", str(caught.value)
    assert says in str(caught.value)
    assert time.perf_counter() - started < 5  # generous: unbounded, each took seconds to minutes


def test_a_single_expression_of_shared_references_is_refused_before_it_is_written() -> None:
    template = compile_template("{{ ['a' * 1000000] * 1000 }}")
    with pytest.raises(TemplateError, match="limit") as caught:
        template.render({})
    assert caught.value.kind == "limit"


def test_lipsum_is_not_offered() -> None:
    with pytest.raises(TemplateError, match="lipsum"):
        compile_template("{{ lipsum(100000) }}").render({})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ 2 ** 62 }}", 2**62),
        ("{{ 'ab' * 3 }}", "ababab"),
        ("{{ [0] * 3 }}", [0, 0, 0]),
        ("{{ 'a-' ~ 1 ~ '-b' }}", "a-1-b"),
        ("{{ 'a' + 'b' }}", "ab"),
        ("{{ '%05d' % 42 }}", "00042"),
        ("{{ '%s-%s' % ('a', 'b') }}", "a-b"),
        ("{{ '{:>4}'.format(7) }}", "   7"),
        ("{{ 'x' | center(5) }}", "  x  "),
        ("{{ 'a,b' | replace(',', ';') }}", "a;b"),
        ("{{ [1, 2, 3] | join(', ') }}", "1, 2, 3"),
        ("{{ range(3) | list }}", [0, 1, 2]),
        ("{% for i in range(3) %}{{ i }}{% endfor %}", "012"),
        ("{{ 'a\nb' | indent(2, true) }}", "  a\n  b"),
        ("{{ [1, 2, 3] | batch(2) | list }}", [[1, 2], [3]]),
        ("{{ {'a': 1} | merge({'b': 2}) }}", {"a": 1, "b": 2}),
        ("{{ {'a': 1, 'b': 2} | pick('a') }}", {"a": 1}),
        ("{% macro twice(x) %}{{ x }}{{ x }}{% endmacro %}{{ twice('a') }}", "aa"),
        ("{{ 7 // 2 }} {{ 7 % 3 }} {{ 2.5 * 2 }}", "3 1 5.0"),
    ],
)
def test_ordinary_templates_still_render(source: str, expected: Any) -> None:
    assert compile_template(source).render({}) == expected


@pytest.fixture
def small_limit() -> Iterator[int]:
    before = LIMITS.max_size
    LIMITS.max_size = 2048
    try:
        yield LIMITS.max_size
    finally:
        LIMITS.max_size = before


def test_a_rendered_value_over_the_limit_fails_with_kind_limit(small_limit: int) -> None:
    big = {"items": ["x" * 100] * 30}  # no operation makes it: it is passed through as is
    with pytest.raises(TemplateError) as caught:
        compile_template("{{ input.big }}").render({"input": {"big": big}})
    assert caught.value.kind == "limit"
    assert f"the limit is {small_limit}" in str(caught.value)
    assert compile_template("{{ input.small }}").render({"input": {"small": "x" * 100}})


def test_the_limit_is_configurable(small_limit: int) -> None:
    with pytest.raises(TemplateError, match="limit"):
        compile_template("{{ 'a' * 3000 }}").render({})
    LIMITS.max_size = 4096
    assert len(compile_template("{{ 'a' * 3000 }}").render({})) == 3000


def test_a_request_over_the_limit_in_total_is_refused(small_limit: int) -> None:
    wf = build({"a": {"http": {"url": "http://svc.test/", "json": {"a": "{{ 'a' * 1500 }}"}}}})
    action = wf.steps["a"].action
    assert isinstance(action, HttpCall)
    assert render_request(action, {})["json"] == {"a": "a" * 1500}
    wf = build(
        {
            "a": {
                "http": {
                    "url": "http://svc.test/",
                    "headers": {"X-A": "{{ 'a' * 1500 }}"},
                    "json": {"a": "{{ 'a' * 1500 }}"},
                }
            }
        }
    )
    action = wf.steps["a"].action
    assert isinstance(action, HttpCall)
    with pytest.raises(TemplateError) as caught:
        render_request(action, {})
    assert caught.value.kind == "limit"
    assert "rendered request" in str(caught.value)


def test_a_step_whose_request_is_too_big_fails_and_stores_no_request(small_limit: int) -> None:
    wf = build({"a": {"http": {"url": "http://svc.test/", "json": {"a": "{{ 'a' * 5000 }}"}}}})
    run = Run(wf)
    d = run.start()
    assert executes(d) == []  # nothing is sent
    step = run.state.steps["a"]
    assert step.status == FAILED
    assert step.request is None  # nor stored
    assert step.error is not None and step.error["kind"] == "limit"
    assert run.state.info.status == FAILED


def test_one_value_in_many_fields_counts_each_time(small_limit: int) -> None:
    template = compile_template({f"f{i}": "{{ input.s }}" for i in range(100)})
    with pytest.raises(TemplateError) as caught:
        template.render({"input": {"s": "x" * 100}})
    assert caught.value.kind == "limit"
    assert len(template.render({"input": {"s": "x"}})) == 100
