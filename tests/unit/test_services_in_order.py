"""The services-in-order form: a list of services becomes a chain of templated HTTP steps."""

from __future__ import annotations

from typing import Any

import pytest

from legato.errors import DefinitionError
from legato.formats import load_definition, parse_document
from legato.formats.services_in_order import is_services_in_order
from legato.model.service import Service
from legato.model.workflow import HttpCall, Workflow


def doc(**extra: Any) -> dict[str, Any]:
    return {"name": "process-text", "services": ["upper", "reverse"], **extra}


def http_action(w: Workflow, step: str) -> HttpCall:
    action = w.steps[step].action
    assert isinstance(action, HttpCall)
    return action


def ctx(input_: dict[str, Any], replies: dict[str, Any]) -> dict[str, Any]:
    """The context after a chain of calls (`replies` in order), each step with the request it sent."""
    steps, data = {}, dict(input_)
    for n, b in replies.items():
        request = {"method": "POST", "service": n, "json": data}
        steps[n] = {"status": "succeeded", "output": {"status": 200, "body": b}, "error": None}
        steps[n]["request"] = request
        data = {**data, **b} if isinstance(b, dict) else data
    return {"input": input_, "steps": steps}


def test_detection() -> None:
    assert is_services_in_order({"services": []})
    assert not is_services_in_order({"services": [], "steps": {}})
    assert not is_services_in_order({"steps": {}})
    assert not is_services_in_order(["services"])


def test_converted_to_chained_http_steps() -> None:
    w = load_definition(doc()).workflow
    assert list(w.steps) == ["upper", "reverse"]
    assert w.roots == ("upper",)
    assert w.steps["upper"].depends_on == ()
    assert w.steps["reverse"].depends_on == ("upper",)
    for name in ("upper", "reverse"):
        action = http_action(w, name)
        assert action.service == name
        assert action.method == "POST"
        assert action.json is not None


def test_three_services_chain_in_order() -> None:
    w = load_definition(doc(services=["a", "b", "c"])).workflow
    assert [w.steps[n].depends_on for n in ("a", "b", "c")] == [(), ("a",), ("b",)]


def test_first_step_posts_the_input() -> None:
    w = load_definition(doc()).workflow
    json_t = http_action(w, "upper").json
    assert json_t is not None
    assert json_t.render(ctx({"message": "hi", "n": 1}, {})) == {"message": "hi", "n": 1}


def test_json_templates_merge_prior_replies_later_wins() -> None:
    w = load_definition(doc(services=["a", "b", "c"])).workflow
    json_t = http_action(w, "c").json
    assert json_t is not None
    assert json_t.references == frozenset({"b"})  # b's request holds what a added
    data = json_t.render(
        ctx({"message": "hi", "keep": 1}, {"a": {"message": "HI", "x": 1}, "b": {"message": "IH"}})
    )
    assert data == {"message": "IH", "keep": 1, "x": 1}


def test_non_object_reply_is_ignored_by_merge() -> None:
    w = load_definition(doc()).workflow
    json_t = http_action(w, "reverse").json
    assert json_t is not None
    assert json_t.render(ctx({"message": "hi"}, {"upper": "plain text"})) == {"message": "hi"}


def test_output_picks_declared_outputs() -> None:
    w = load_definition(
        doc(
            inputs=[{"name": "message", "type": "string"}],
            outputs=[{"name": "message", "type": "string"}, {"name": "count", "type": "integer"}],
        )
    ).workflow
    assert w.output is not None
    out = w.output.render(
        ctx(
            {"message": "hi", "secret": "s"},
            {"upper": {"message": "HI", "count": 2, "extra": 1}, "reverse": {"message": "IH"}},
        )
    )
    assert out == {"message": "IH", "count": 2}


def test_output_picks_declared_outputs_in_mapping_form() -> None:
    w = load_definition(doc(outputs={"message": "string"})).workflow
    assert w.output is not None
    out = w.output.render(
        ctx(
            {"message": "hi"},
            {"upper": {"message": "HI", "x": 1}, "reverse": {"message": "IH", "y": 2}},
        )
    )
    assert out == {"message": "IH"}


def test_output_without_declared_outputs_is_everything_merged() -> None:
    w = load_definition(doc()).workflow
    assert w.output is not None
    out = w.output.render(ctx({"message": "hi"}, {"upper": {"a": 1}, "reverse": {"b": 2}}))
    assert out == {"message": "hi", "a": 1, "b": 2}


def test_inputs_outputs_description_timeout_defaults_are_kept() -> None:
    w = load_definition(
        doc(
            description="d",
            timeout="1m",
            defaults={"retries": 2},
            inputs={"message": "string"},
            outputs={"message": "string"},
        )
    ).workflow
    assert w.description == "d"
    assert w.timeout == 60.0
    assert w.steps["upper"].retry.retries == 2
    assert [f.name for f in w.inputs] == ["message"]
    assert [f.name for f in w.outputs] == ["message"]


def test_inline_services_returned_in_definition() -> None:
    d = load_definition(
        doc(
            services=[
                "upper",
                {"name": "reverse", "address": "http://svc.test/reverse", "timeout": "5s"},
            ]
        )
    )
    assert d.services == (Service(name="reverse", base_url="http://svc.test/reverse", timeout=5.0),)
    assert http_action(d.workflow, "reverse").service == "reverse"


def test_inline_service_counts_as_known_service() -> None:
    d = load_definition(
        doc(services=["upper", {"name": "reverse", "address": "http://svc.test/r"}]),
        services=["upper"],
    )
    assert [s.name for s in d.services] == ["reverse"]


def test_unknown_service_reported_against_directory() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(doc(), services=["upper"])
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("services[1]", "unknown service 'reverse'")
    ]


def test_invalid_inline_service_address_reported_with_path() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(doc(services=[{"name": "upper", "address": "ftp://nowhere"}, "reverse"]))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("services[0].address", "must be an absolute http:// or https:// URL")
    ]


def test_inline_service_without_address_reported() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(doc(services=["upper", {"name": "reverse"}]))
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("services[1].address", "is required")
    ]


def test_bad_service_entry_and_unknown_field_reported_together() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(doc(services=["upper", 3], colour="red"))
    assert {(p.path, p.message) for p in info.value.problems} == {
        ("services[1]", "must be a service name or {name, address, inputs, outputs}"),
        ("colour", "is not a known field"),
    }


def test_empty_services_list_refused() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "x", "services": []})
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("services", "must list at least one service")
    ]


def test_service_names_become_valid_unique_step_names() -> None:
    w = load_definition(
        doc(services=["text-upper", "9lives", "text-upper", "text_upper_2"])
    ).workflow
    assert list(w.steps) == ["text_upper", "s_9lives", "text_upper_2", "text_upper_2_2"]
    assert http_action(w, "text_upper_2").service == "text-upper"
    assert http_action(w, "text_upper_2_2").service == "text_upper_2"
    assert w.steps["text_upper_2_2"].depends_on == ("text_upper_2",)


def test_loads_from_json_text() -> None:
    text = (
        '{"name": "t", "services": ["upper"], "outputs": [{"name": "message", "type": "string"}]}'
    )
    w = load_definition(text).workflow
    assert list(w.steps) == ["upper"]


def test_loads_from_yaml_text() -> None:
    w = load_definition("name: t\nservices: [upper, reverse]\n").workflow
    assert list(w.steps) == ["upper", "reverse"]


def test_native_form_passes_through_load_definition() -> None:
    d = load_definition({"name": "n", "steps": {"a": {"http": {"service": "s"}}}}, services=["s"])
    assert d.services == ()
    assert list(d.workflow.steps) == ["a"]


def test_parse_document_errors() -> None:
    with pytest.raises(DefinitionError, match="malformed JSON"):
        parse_document("{", "json")
    with pytest.raises(DefinitionError, match="malformed YAML at line"):
        parse_document("a: [1,\n")
    assert parse_document("a: 1") == {"a": 1}
    assert parse_document(b'{"a": [1]}', "json") == {"a": [1]}
