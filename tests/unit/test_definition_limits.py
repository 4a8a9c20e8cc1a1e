"""Definition limits: a definition past one is refused before it is built, naming the limit."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from legato import expressions
from legato.errors import DefinitionError
from legato.formats import load_definition
from legato.model.limits import DEFAULT_MAX_STEPS, DefinitionLimits


def chain(n: int) -> dict[str, Any]:
    """n HTTP steps in a line, each reading its predecessor's output."""
    steps: dict[str, Any] = {}
    for i in range(n):
        step: dict[str, Any] = {
            "http": {"url": "http://svc.test/", "json": {"v": f"{{{{ steps.s{i - 1}.output }}}}"}}
        }
        if i:
            step["depends_on"] = [f"s{i - 1}"]
        else:
            step["http"]["json"] = {"v": 1}
        steps[f"s{i}"] = step
    return {"name": "big", "steps": steps}


def problems(exc: DefinitionError) -> dict[str, str]:
    return {p.path: p.message for p in exc.problems}


def test_too_many_steps_is_refused_before_building() -> None:
    doc = orjson.dumps(chain(10_000))
    started = time.perf_counter()
    with pytest.raises(DefinitionError) as caught:
        load_definition(doc, limits=DefinitionLimits(max_bytes=len(doc)))
    assert time.perf_counter() - started < 2  # generous: building it took ~20 s
    assert problems(caught.value) == {
        "steps": f"10000 steps; the limit is {DEFAULT_MAX_STEPS} (legato serve --max-steps)"
    }


def test_the_step_limit_counts_a_list_of_steps_and_the_services_in_order_form() -> None:
    limits = DefinitionLimits(max_steps=2)
    listed = {"name": "w", "steps": [{"name": f"s{i}", "fail": "x"} for i in range(3)]}
    with pytest.raises(DefinitionError, match="3 steps; the limit is 2"):
        load_definition(listed, limits=limits)
    in_order = {"name": "w", "services": [{"name": f"s{i}", "url": "http://x/"} for i in range(3)]}
    with pytest.raises(DefinitionError, match="3 services; the limit is 2"):
        load_definition(in_order, limits=limits)


def test_a_definition_at_the_limits_is_accepted() -> None:
    wf = load_definition(chain(50), limits=DefinitionLimits(max_steps=50)).workflow
    assert len(wf.steps) == 50


def test_a_big_definition_builds_in_linear_time() -> None:
    """Checking references once took quadratic time (sets of ancestors per step)."""
    limits = DefinitionLimits(max_steps=10**6, max_bytes=10**9)
    started = time.perf_counter()
    load_definition(chain(500), limits=limits)
    small = time.perf_counter() - started
    started = time.perf_counter()
    load_definition(chain(4000), limits=limits)
    large = time.perf_counter() - started
    assert large < small * 8 * 4  # 8x the steps: linear is 8x; a wide margin for noise


def test_too_deep_is_refused_with_the_path() -> None:
    nested: Any = "{{ input.x }}"
    for _ in range(10):
        nested = {"a": nested}
    doc = {"name": "w", "steps": {"s": {"http": {"url": "http://x/", "json": nested}}}}
    with pytest.raises(DefinitionError) as caught:
        load_definition(doc, limits=DefinitionLimits(max_nesting=8))
    [(path, message)] = problems(caught.value).items()
    assert path.startswith("steps.s.http.json.a")
    assert message == "nests deeper than 8 levels (legato serve --max-nesting)"
    assert load_definition(doc, limits=DefinitionLimits(max_nesting=16)).workflow.name == "w"


def test_too_big_is_refused_as_text_and_as_data() -> None:
    doc = {"name": "w", "steps": {"s": {"fail": "x" * 5000}}}
    limits = DefinitionLimits(max_bytes=4096)
    for given in (doc, orjson.dumps(doc)):
        with pytest.raises(DefinitionError, match=r"bytes; the limit is 4096 \(legato serve"):
            load_definition(given, limits=limits)


def test_an_unknown_filter_in_text_is_a_definition_problem_naming_the_field() -> None:
    doc = {
        "name": "w",
        "steps": {
            "s": {
                "http": {
                    "url": "http://x/",
                    "headers": {"Authorization": "Basic {{ x | b64encode }}"},
                }
            }
        },
    }
    with pytest.raises(DefinitionError) as caught:
        load_definition(doc)
    [(path, message)] = problems(caught.value).items()
    assert path == "steps.s.http.headers"
    assert "No filter named 'b64encode'" in message


def test_path_templates_are_not_compiled_until_the_fast_path_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiled Jinja is what made big definitions slow to validate and to garbage-collect."""
    compiled: list[str] = []
    real = expressions._text

    def counting(text: str) -> Any:
        compiled.append(text)
        return real(text)

    monkeypatch.setattr(expressions, "_text", counting)
    template = expressions.compile_template("http://h/{{ input.id }}")
    assert compiled == []
    assert template.render({"input": {"id": 7}}) == "http://h/7"
    assert compiled == []  # the fast path rendered it
    assert template.render({"input": {"id": {"a": 1}}}) == "http://h/{'a': 1}"  # Jinja's way
    assert compiled == ["http://h/{{ input.id }}"]


def test_a_document_too_deep_for_the_reader_or_not_text_is_a_definition_problem() -> None:
    for text in (b"[" * 5000 + b"]" * 5000, b"\xff\xfe\x00\x00", b"a: \x80\x81"):
        with pytest.raises(DefinitionError):
            load_definition(text, limits=DefinitionLimits(max_nesting=10**6))
