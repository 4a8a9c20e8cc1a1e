"""Templates: native values from a single expression, text otherwise, a sandbox, and step references."""

from __future__ import annotations

from typing import Any

import pytest

from legato.expressions import Template, TemplateError, compile_template, evaluate_truth

CTX: dict[str, Any] = {
    "input": {
        "items": [1, 2, 3],
        "n": 4,
        "name": "ada",
        "keys": "k",
        "user": {"id": 7, "role": "admin"},
    },
    "steps": {"a": {"status": "succeeded", "output": {"body": {"x": 1, "y": 2}}, "error": None}},
}


def render(source: Any, ctx: dict[str, Any] | None = None) -> Any:
    return compile_template(source).render(CTX if ctx is None else ctx)


# -- native values ------------------------------------------------------------------------------


def test_single_expression_yields_a_list() -> None:
    assert render("{{ [1, 2, 3] }}") == [1, 2, 3]


def test_single_expression_yields_an_int() -> None:
    value = render("{{ input.n * 2 }}")
    assert value == 8
    assert isinstance(value, int)


def test_single_expression_yields_a_dict() -> None:
    assert render("{{ input.user }}") == {"id": 7, "role": "admin"}


def test_single_expression_yields_bool_none_and_float() -> None:
    assert render("{{ input.n > 3 }}") is True
    assert render("{{ none }}") is None
    assert render("{{ input.n / 8 }}") == 0.5


def test_single_expression_surrounding_whitespace_still_native() -> None:
    assert render("  {{ input.items }}\n") == [1, 2, 3]


def test_mixed_text_renders_to_a_string() -> None:
    assert render("n={{ input.n }}") == "n=4"
    assert render("{{ input.n }}{{ input.n }}") == "44"
    assert render("{{ input.name }} and {{ input.n }}") == "ada and 4"


def test_statement_block_renders_to_a_string() -> None:
    assert render("{% for i in input.items %}{{ i }},{% endfor %}") == "1,2,3,"


def test_plain_values_are_constant_and_returned_as_is() -> None:
    source = {"a": 1, "b": ["x", None, True], "c": "plain text"}
    t = compile_template(source)
    assert t.is_constant
    assert t.render({}) == source
    assert t.references == frozenset()


def test_nested_structures_render_each_template() -> None:
    source = {
        "id": "{{ input.user.id }}",
        "list": ["{{ input.n }}", "n={{ input.n }}", 5],
        "k": "v",
    }
    t = compile_template(source)
    assert not t.is_constant
    assert t.render(CTX) == {"id": 7, "list": [4, "n=4", 5], "k": "v"}


def test_single_expression_with_nested_dict_literal_yields_a_dict() -> None:
    assert render("{{ {'a': {'b': 1}} }}") == {"a": {"b": 1}}


def test_single_expression_with_flat_dict_literal_yields_a_dict() -> None:
    assert render("{{ {'a': 1} }}") == {"a": 1}


def test_repr_shows_source() -> None:
    assert repr(compile_template("{{ x }}")) == "Template('{{ x }}')"


# -- data first ---------------------------------------------------------------------------------


def test_input_items_is_the_field_not_the_dict_method() -> None:
    assert render("{{ input.items }}") == [1, 2, 3]


def test_input_keys_is_the_field_not_the_dict_method() -> None:
    assert render("{{ input.keys }}") == "k"


def test_dict_method_when_no_such_key_is_not_a_json_value() -> None:
    with pytest.raises(TemplateError, match="not a JSON value"):
        render("{{ input.values }}")


def test_item_access_with_brackets() -> None:
    assert render("{{ input['user']['role'] }}") == "admin"


# -- errors -------------------------------------------------------------------------------------


def test_undefined_reference_raises_template_error() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        render("{{ input.missing }}")


def test_undefined_top_level_name_raises_template_error() -> None:
    with pytest.raises(TemplateError):
        render("{{ nothing }}")


def test_undefined_in_text_raises_template_error() -> None:
    with pytest.raises(TemplateError):
        render("hello {{ input.missing }}")


def test_undefined_attribute_of_undefined_raises_template_error() -> None:
    with pytest.raises(TemplateError):
        render("{{ steps.zz.output.body }}")


@pytest.mark.parametrize(
    "source", ["{{ 1 + }}", "{{ input. }}", "text {{ ( }}", "{% if %}", "{{ a b }}"]
)
def test_syntax_error_raises_at_compile(source: str) -> None:
    with pytest.raises(TemplateError, match=r"bad (expression|template)"):
        compile_template(source)


def test_syntax_error_inside_nested_structure_raises_at_compile() -> None:
    with pytest.raises(TemplateError):
        compile_template({"ok": "{{ 1 }}", "list": ["fine", "{{ 1 + }}"]})


def test_runtime_exception_becomes_template_error() -> None:
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        render("{{ 1 / 0 }}")
    with pytest.raises(TemplateError):
        render("{{ input.items[10] }}")


def test_non_json_result_is_refused() -> None:
    with pytest.raises(TemplateError, match="not a JSON value"):
        render("{{ range(3) }}")


def test_template_error_is_not_a_jinja_error() -> None:
    import jinja2

    with pytest.raises(TemplateError) as info:
        render("{{ input.missing }}")
    assert not isinstance(info.value, jinja2.TemplateError)


# -- sandbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "x{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ input.__class__ }}",
        "{{ [].append(1) }}",
        "{{ input.user.update({'role': 'root'}) }}",
    ],
)
def test_sandbox_blocks_unsafe_access(source: str) -> None:
    ctx: dict[str, Any] = {"input": {"user": {"role": "admin"}}}
    t = compile_template(source)  # compiles fine: the sandbox acts on render
    with pytest.raises(TemplateError):
        t.render(ctx)
    assert ctx["input"]["user"]["role"] == "admin"


# -- step references ------------------------------------------------------------------------------


def test_references_collects_step_names_from_attribute_access() -> None:
    t = compile_template("{{ steps.a.output.body.x + steps.b.output }}")
    assert t.references == frozenset({"a", "b"})


def test_references_collects_step_names_from_item_access() -> None:
    assert compile_template("{{ steps['c'].output }}").references == frozenset({"c"})


def test_references_collected_from_text_and_nested_values() -> None:
    t = compile_template({"x": "id {{ steps.first.output }}", "y": ["{{ steps.second.status }}"]})
    assert t.references == frozenset({"first", "second"})


def test_references_ignore_input_and_other_names() -> None:
    t = compile_template("{{ input.steps }} {{ item.a }} {{ run.id }}")
    assert t.references == frozenset()


def test_references_from_statements() -> None:
    t = compile_template("{% if steps.gate.status == 'succeeded' %}yes{% endif %}")
    assert t.references == frozenset({"gate"})


def test_render_step_output() -> None:
    assert render("{{ steps.a.output.body.x }}") == 1


# -- helpers ------------------------------------------------------------------------------------


def test_merge_global_combines_mappings_later_wins() -> None:
    ctx = {"a": {"x": 1, "y": 1}, "b": {"y": 2, "z": 3}}
    assert render("{{ merge(a, b) }}", ctx) == {"x": 1, "y": 2, "z": 3}


def test_merge_ignores_non_mappings() -> None:
    ctx = {"a": {"x": 1}, "s": "text", "n": None, "l": [1]}
    assert render("{{ merge(a, s, n, l) }}", ctx) == {"x": 1}
    assert render("{{ merge() }}", ctx) == {}


def test_merge_does_not_modify_its_arguments() -> None:
    ctx: dict[str, Any] = {"a": {"x": 1}, "b": {"x": 2}}
    assert render("{{ merge(a, b) }}", ctx) == {"x": 2}
    assert ctx["a"] == {"x": 1}


def test_merge_as_filter() -> None:
    ctx = {"a": {"x": 1}, "b": {"y": 2}}
    assert render("{{ a | merge(b) }}", ctx) == {"x": 1, "y": 2}


def test_pick_keeps_only_named_keys_that_exist() -> None:
    ctx = {"a": {"x": 1, "y": 2, "z": 3}}
    assert render("{{ a | pick('x', 'z', 'missing') }}", ctx) == {"x": 1, "z": 3}


def test_pick_of_non_mapping_is_empty() -> None:
    assert render("{{ [1, 2] | pick('x') }}", {}) == {}


def test_merge_then_pick() -> None:
    ctx = {"input": {"a": 1, "b": 2}, "reply": {"b": 3, "c": 4}}
    assert render("{{ merge(input, reply) | pick('b', 'c') }}", ctx) == {"b": 3, "c": 4}


# -- truth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ true }}", True),
        ("{{ false }}", False),
        ("{{ 0 }}", False),
        ("{{ 1 }}", True),
        ("{{ [] }}", False),
        ("{{ [0] }}", True),
        ("{{ none }}", False),
        ("false", False),
        ("False", False),
        (" 0 ", False),
        ("no", False),
        ("null", False),
        ("none", False),
        ("", False),
        ("yes", True),
        ("x {{ input.n }}", True),
        ("{{ input.n }} ", True),
        ("{% if input.n > 10 %}yes{% endif %}", False),
    ],
)
def test_evaluate_truth(source: str, expected: bool) -> None:
    assert evaluate_truth(compile_template(source), CTX) is expected


def test_evaluate_truth_propagates_template_errors() -> None:
    with pytest.raises(TemplateError):
        evaluate_truth(compile_template("{{ input.missing }}"), CTX)


def test_template_class_keeps_source() -> None:
    src = {"a": "{{ 1 }}"}
    t = compile_template(src)
    assert isinstance(t, Template)
    assert t.source == src


# -- plain paths (looked up directly) agree with Jinja ----------------------------------------------

PATH_CTX: dict[str, Any] = {
    "input": {
        "items": [10, [20, 21], {"k": "v"}],
        "flag": True,
        "none": None,
        "f": 0.25,
        "name": "ada",
        "0": "zero-key",
    },
    "steps": {"a": {"output": {"body": {"id": 5}}, "status": "succeeded"}},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ input.items[0] }}", 10),
        ("{{ input.items[1][1] }}", 21),
        ("{{ input.items[2].k }}", "v"),
        ("{{ input.items[-1] }}", {"k": "v"}),
        ("{{ steps['a'].output['body'].id }}", 5),
        ("{{ input['0'] }}", "zero-key"),
        ("{{ input.none }}", None),
        ("{{ input.flag }}", True),
        ("{{ input.name.upper() }}", "ADA"),
        ("{{ input.items | length }}", 3),
        ("id={{ steps.a.output.body.id }}", "id=5"),
        ("{{ input.flag }}/{{ input.none }}/{{ input.f }}", "True/None/0.25"),
        ("{{ input.items[1] }}!", "[20, 21]!"),
        ("{{ input.items[2] }}", {"k": "v"}),
    ],
)
def test_path_lookups_match_jinja_semantics(source: str, expected: Any) -> None:
    assert compile_template(source).render(PATH_CTX) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ input.items[3] }}",
        "{{ input.missing }}",
        "x {{ input.missing }}",
        "{{ steps.b.output }}",
        "{{ input.none.x }}",
        "{{ input.name.upper }}",
        "{{ nothing }}",
        "{{ input.items.x }}",
    ],
)
def test_path_lookups_that_miss_raise_template_error(source: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(source).render(PATH_CTX)


def test_path_lookup_returns_a_value_equal_to_the_context() -> None:
    ctx: dict[str, Any] = {"input": {"user": {"id": 1}}}
    assert compile_template("{{ input.user }}").render(ctx) == {"id": 1}


def test_items_field_via_path_and_via_filter_agree() -> None:
    t_path = compile_template("{{ input.items }}")
    t_expr = compile_template("{{ input.items | list }}")
    assert t_path.render(PATH_CTX) == t_expr.render(PATH_CTX) == PATH_CTX["input"]["items"]
