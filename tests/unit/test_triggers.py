"""A workflow's `triggers`: read and checked with the definition, kept in its plain form, and the
template context a message gives them."""

from __future__ import annotations

from typing import Any

import pytest

import legato.dsl as dsl
from legato.engine.triggers import (
    Rejected,
    _key_text,
    context,
    default_key,
    group_of,
    unknown_transports,
)
from legato.model.build import build_workflow
from legato.model.workflow import Trigger
from legato.transports import Message
from tests.unit.test_build import problems


def definition(*triggers: Any) -> dict[str, Any]:
    return {
        "name": "orders",
        "inputs": [{"name": "order", "type": "string"}],
        "steps": {"one": {"python": {"function": "json:dumps"}}},
        "triggers": list(triggers),
    }


def test_a_trigger_is_read_with_its_templates_and_kept_in_the_plain_form() -> None:
    spec = definition(
        {
            "transport": "bus",
            "topic": "orders",
            "filter": "{{ message.kind == 'new' }}",
            "key": "{{ message.order }}",
            "input": {"order": "{{ message.order }}"},
            "group": "billing",
        },
        {"transport": "bus", "subject": "orders.created"},
    )
    wf = build_workflow(spec)
    first, second = wf.triggers
    assert (first.transport, first.kind, first.destination, first.group) == (
        "bus",
        "topic",
        "orders",
        "billing",
    )
    ctx = {"message": {"kind": "new", "order": "A-1"}}
    assert first.filter is not None and first.filter.render(ctx) is True
    assert first.input is not None and first.input.render(ctx) == {"order": "A-1"}
    assert (second.kind, second.filter, second.key, second.input) == ("subject", None, None, None)
    assert group_of("orders", second) == "legato.orders" and group_of("orders", first) == "billing"
    again = build_workflow(wf.to_dict())  # the round trip
    assert [(t.kind, t.destination, t.key and t.key.source) for t in again.triggers] == [
        ("topic", "orders", "{{ message.order }}"),
        ("subject", "orders.created", None),
    ]
    assert wf.to_dict()["triggers"] == spec["triggers"]


def test_every_problem_of_the_triggers_is_reported_with_its_path() -> None:
    found = problems(
        definition(
            {"topic": "a", "queue": "b"},
            {"transport": "bus", "subject": "{{ input.x }}"},
            {"transport": "bus", "queue": "q", "filter": "{{ nope(", "color": "red"},
            {"transport": "bus", "queue": ""},
            {"transport": "bus", "topic": "t", "group": "has space"},
            "bus",
        )
    )
    assert "name of a transport" in found["triggers[0].transport"]
    assert (
        "exactly one of `topic`" in found["triggers[0]"]
        and "topic and queue" in found["triggers[0]"]
    )
    assert "not a template" in found["triggers[1].subject"]
    assert "triggers[2].filter" in found
    assert found["triggers[2].color"] == "is not a known field"
    assert found["triggers[3].queue"] == "must be a non-empty string"
    assert "letters, digits" in found["triggers[4].group"]
    assert found["triggers[5]"] == "must be a mapping"
    assert "must be a list" in problems({**definition(), "triggers": {"topic": "x"}})["triggers"]


def test_two_triggers_on_one_destination_are_refused() -> None:
    found = problems(
        definition({"transport": "bus", "topic": "t"}, {"transport": "bus", "topic": "t"})
    )
    assert "one trigger per destination" in found["triggers[1]"]


def test_an_unknown_transport_is_named_with_the_ones_there_are() -> None:
    wf = build_workflow(
        definition({"transport": "bus", "topic": "t"}, {"transport": "k", "queue": "q"})
    )
    (problem,) = unknown_transports(wf, {"k", "nats"})
    assert problem.path == "triggers[0].transport"
    assert "no transport named 'bus'; this server has: k, nats" in problem.message
    assert len(unknown_transports(wf, set())) == 2
    none = unknown_transports(wf, set())[0]
    assert "none (start the server with --transport NAME=URL)" in none.message


def test_the_dsl_takes_triggers() -> None:
    @dsl.workflow(triggers=[{"transport": "bus", "queue": "jobs", "input": {"n": "{{ message }}"}}])
    def jobs() -> None:
        dsl.fail("one", "never")

    assert jobs.triggers[0].destination == "jobs"
    assert jobs.to_dict()["triggers"] == [
        {"transport": "bus", "queue": "jobs", "input": {"n": "{{ message }}"}}
    ]


def test_a_message_gives_its_body_headers_key_and_id_to_the_templates() -> None:
    ctx = context(Message("orders", b'{"a": 1}', {"h": "v"}, id="orders/0/7", key="k1"))
    assert ctx == {
        "message": {"a": 1},
        "headers": {"h": "v"},
        "destination": "orders",
        "key": "k1",
        "id": "orders/0/7",
    }
    assert context(Message("q", b"plain text"))["message"] == "plain text"


@pytest.mark.parametrize("key", [None, ""])
def test_a_missing_key_is_a_rejection(key: Any) -> None:
    with pytest.raises(Rejected):
        _key_text(key)


@pytest.mark.parametrize("key", ["x" * 257, "x" * 5000, "bad\x00id", "a\nb", "a\x9bb", "a\ud800b"])
def test_a_long_or_unsafe_key_is_stored_as_its_hash(key: str) -> None:
    text = _key_text(key)
    assert text.startswith("sha256:") and len(text) == 71
    assert _key_text(key) == text and _key_text(key + "y") != text  # still dedupes, still apart


def test_a_plain_key_is_kept_as_is() -> None:
    assert _key_text("x" * 256) == "x" * 256
    assert _key_text("orders/0/7@17") == "orders/0/7@17"


def test_the_default_key_is_scoped_by_transport_and_destination() -> None:
    msg = Message("orders", b"{}", {}, id="42")
    assert default_key(Trigger("bus", "topic", "orders"), msg) == "bus:orders:42"
    assert default_key(Trigger("other", "topic", "payments"), msg) == "other:payments:42"
    assert default_key(Trigger("bus", "topic", "orders"), Message("orders", b"{}")) is None


def test_a_key_that_is_not_text_is_its_json() -> None:
    assert _key_text(42) == "42" and _key_text({"a": 1}) == '{"a":1}'
