"""Reading definition documents: YAML aliases that would blow up, and the ones people really use."""

from __future__ import annotations

import pytest

from legato.errors import DefinitionError
from legato.formats.loader import parse_document


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    with pytest.raises(DefinitionError, match="expands to more than"):
        parse_document("\n".join(lines), "yaml")


def test_an_alias_to_itself_is_refused() -> None:
    with pytest.raises(DefinitionError, match="loop"):
        parse_document("a: &a [1, *a]", "yaml")


def test_merge_keys_and_shared_anchors_still_work() -> None:
    doc = parse_document(
        "defaults: &d {retries: 3, timeout: 5s}\n"
        "steps:\n  a: {<<: *d, http: {url: 'http://h/'}}\n  b: {<<: *d, retries: 1}\n",
        "yaml",
    )
    assert doc["steps"]["a"]["retries"] == 3
    assert doc["steps"]["b"] == {"retries": 1, "timeout": "5s"}


def test_an_empty_yaml_document_is_none() -> None:
    assert parse_document("", "yaml") is None
    assert parse_document("# nothing\n", "yaml") is None


def test_yaml_scalars_follow_yaml_1_2() -> None:
    doc = parse_document("retry: {on: [5xx]}\nanswer: yes\nflag: true\nday: 2024-01-01\n", "yaml")
    assert doc == {"retry": {"on": ["5xx"]}, "answer": "yes", "flag": True, "day": "2024-01-01"}


@pytest.mark.parametrize(
    "text", ["a: 123456789012345678901234567890", "a: !!set {x, y}", "{1: 2}", "a: !!binary aGk="]
)
def test_values_json_cannot_hold_are_refused(text: str) -> None:
    with pytest.raises(DefinitionError, match="cannot be stored as JSON"):
        parse_document(text, "yaml")


def test_yaml_1_1_numbers_are_not_guessed() -> None:
    doc = parse_document("at: 12:30\nzip: 010\nn: 10\nx: 0x1F\nf: 1.5\ne: 1e3\nv: =\n", "yaml")
    assert doc == {"at": "12:30", "zip": "010", "n": 10, "x": 31, "f": 1.5, "e": 1000.0, "v": "="}


def test_json_nested_past_what_the_store_writes_is_refused() -> None:
    deep = b'{"name": "x", "steps": {}, "description": ' + b"[" * 300 + b"]" * 300 + b"}"
    with pytest.raises(DefinitionError, match="cannot be stored as JSON"):
        parse_document(deep, "json")


def test_yaml_infinities_and_nans_stay_strings() -> None:
    assert parse_document("a: .inf\nb: -.inf\nc: .nan\n", "yaml") == {
        "a": ".inf",
        "b": "-.inf",
        "c": ".nan",
    }
