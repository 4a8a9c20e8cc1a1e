"""machinery's own documents (examples/machinery, as its README shows them) load unchanged, and what
is wrong in one is reported all at once, with the document's own field names."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from legato.errors import DefinitionError, Problem
from legato.formats import load_definition
from legato.formats.loader import load_services
from legato.formats.services_in_order import unproduced_outputs
from legato.model.fields import Field
from legato.model.service import Service

EXAMPLES = Path(__file__).parents[2] / "examples" / "machinery"
DIRECTORY = {"upper", "reverse", "space-counter"}


def seed(name: str) -> Any:
    return orjson.loads((EXAMPLES / name).read_bytes())


def problems(exc: pytest.ExceptionInfo[DefinitionError]) -> dict[str, str]:
    return {p.path: p.message for p in exc.value.problems}


def test_seed_workflow_loads_verbatim() -> None:
    text = (EXAMPLES / "workflow-process-text.json").read_bytes()
    definition = load_definition(text, services=DIRECTORY)
    wf = definition.workflow
    assert list(wf.steps) == ["upper", "reverse", "space_counter"]
    assert definition.chain == ("upper", "reverse", "space-counter")
    assert wf.outputs == (
        Field("message", "string", "The processed text"),
        Field("space_count", "integer", "The number of spaces"),
    )


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("int", "integer"),
        ("float", "number"),
        ("str", "string"),
        ("bool", "boolean"),
        ("dict", "object"),
        ("list", "array"),
    ],
)
def test_type_aliases(alias: str, canonical: str) -> None:
    doc = {"name": "t", "services": ["upper"], "inputs": [{"name": "x", "type": alias}]}
    assert load_definition(doc).workflow.inputs == (Field("x", canonical),)
    mapping = {"name": "t", "services": ["upper"], "outputs": {"y": alias}}
    assert load_definition(mapping).workflow.outputs == (Field("y", canonical),)


def test_alias_is_kept_as_written_in_the_document() -> None:
    doc = seed("workflow-process-text.json")
    before = copy.deepcopy(doc)
    wf = load_definition(doc).workflow
    assert doc == before
    assert wf.spec["outputs"][1]["type"] == "int"


def test_unknown_type_names_the_aliases() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "t", "services": ["a"], "inputs": {"x": "text"}})
    assert "short names int, float, str, bool, dict, list" in problems(info)["inputs.x.type"]


def test_empty_operations_accepted_and_dropped() -> None:
    wf = load_definition({"name": "t", "services": ["a"], "operations": []}).workflow
    assert "operations" not in wf.spec


@pytest.mark.parametrize("operations", [[{"op": "x"}], "x", {}])
def test_non_empty_operations_refused(operations: Any) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "t", "services": ["a"], "operations": operations})
    assert list(problems(info)) == ["operations"]
    assert "no meaning in Legato yet" in problems(info)["operations"]


def test_every_problem_of_a_services_in_order_document_at_once() -> None:
    doc = seed("workflow-process-text.json")
    doc["name"] = "bad name!"
    doc["operations"] = ["split"]
    doc["inputs"][0]["type"] = "text"
    doc["colour"] = "blue"
    doc["services"].append("nowhere")
    with pytest.raises(DefinitionError) as info:
        load_definition(orjson.dumps(doc), services=DIRECTORY)
    assert set(problems(info)) == {
        "name",
        "operations",
        "inputs[0].type",
        "colour",
        "services[3]",
    }
    assert problems(info)["services[3]"] == "unknown service 'nowhere'"
    assert problems(info)["colour"] == "is not a known field"


def test_no_services_is_one_problem() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "t", "services": [], "outputs": {"y": "int"}})
    assert problems(info) == {"services": "must list at least one service"}


def test_native_form_reports_unknown_services_with_other_problems() -> None:
    doc = {
        "name": "t",
        "inputs": {"x": "text"},
        "steps": {"a": {"http": {"service": "ghost"}}},
    }
    with pytest.raises(DefinitionError) as info:
        load_definition(doc, services=DIRECTORY)
    assert set(problems(info)) == {"inputs.x.type", "steps.a.http.service"}


# -- outputs no service produces --------------------------------------------------------------


def service(name: str, *outputs: str) -> Service:
    return Service(name, f"http://127.0.0.1/{name}", outputs=tuple(Field(o) for o in outputs))


MESSAGE = (Field("message", "string"),)
WANTED = (Field("message", "string"), Field("space_count", "integer"))
CHAIN = ("upper", "reverse", "space-counter")


def test_seed_broken_space_counter_is_an_error_naming_output_and_services() -> None:
    directory = {n: service(n, "message") for n in CHAIN}
    found, warnings = unproduced_outputs(MESSAGE, WANTED, CHAIN, directory)
    assert warnings == []
    assert found == [
        Problem(
            "outputs.space_count",
            "no service declares producing 'space_count' and it is not an input "
            "(upper declares message; reverse declares message; space-counter declares message)",
        )
    ]


def test_declared_outputs_that_services_produce_pass() -> None:
    directory = {
        **{n: service(n, "message") for n in CHAIN[:2]},
        CHAIN[2]: service(CHAIN[2], "space_count"),
    }
    assert unproduced_outputs(MESSAGE, WANTED, CHAIN, directory) == ([], [])


def test_an_input_passed_through_is_produced() -> None:
    directory = {n: service(n, "message") for n in CHAIN}
    inputs = (*MESSAGE, Field("space_count", "integer"))
    assert unproduced_outputs(inputs, WANTED, CHAIN, directory) == ([], [])


def test_an_optional_output_may_be_missing() -> None:
    directory = {n: service(n, "message") for n in CHAIN}
    wanted = (Field("message"), Field("space_count", required=False))
    assert unproduced_outputs(MESSAGE, wanted, CHAIN, directory) == ([], [])


def test_a_service_declaring_no_outputs_makes_it_a_warning() -> None:
    directory = {"upper": service("upper", "message"), "reverse": service("reverse")}
    found, warnings = unproduced_outputs(MESSAGE, WANTED, ("upper", "reverse"), directory)
    assert found == []
    assert warnings == [
        "outputs.space_count: no service declares producing it and reverse declares no "
        "outputs: it is checked when a run ends"
    ]


def test_no_declared_inputs_makes_it_a_warning() -> None:
    directory = {n: service(n, "message") for n in CHAIN}
    found, warnings = unproduced_outputs((), WANTED, CHAIN, directory)
    assert found == []
    assert warnings and "the workflow declares no inputs" in warnings[0]


# -- service files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["upper", "reverse", "space-counter"])
def test_seed_service_files_load(name: str) -> None:
    [entry] = load_services((EXAMPLES / f"service-{name}.json").read_bytes())
    found = Service.from_dict(entry)
    assert found.name == name
    assert found.base_url.startswith("http://127.0.0.1:5000/")
    assert found.inputs and found.outputs


def test_service_documents_in_every_shape() -> None:
    one = {"name": "a", "address": "http://127.0.0.1/a"}
    two = {"name": "b", "base_url": "http://127.0.0.1/b", "timeout": "5s"}
    assert load_services(orjson.dumps(one)) == [one]
    assert load_services(orjson.dumps([one, two])) == [one, two]
    assert load_services(orjson.dumps({"services": [one, two]})) == [one, two]
    yaml_text = b"name: a\naddress: http://127.0.0.1/a\noutputs:\n  - {name: n, type: int}\n"
    assert load_services(yaml_text)[0]["outputs"] == [{"name": "n", "type": "int"}]


def test_every_problem_of_a_service_list_at_once() -> None:
    doc = [
        {"name": "a", "address": "ftp://x", "inputs": [{"name": "m", "type": "text"}]},
        "b",
        {"name": "c", "address": "http://127.0.0.1/c", "colour": "red"},
    ]
    with pytest.raises(DefinitionError) as info:
        load_services(orjson.dumps(doc))
    assert set(problems(info)) == {"[0].address", "[0].inputs[0].type", "[1]", "[2].colour"}


def _chain(n: int) -> dict[str, Any]:
    return {
        "name": "big",
        "services": ["upper"] * n,
        "inputs": [{"name": "message", "type": "str"}],
        "outputs": [{"name": "message", "type": "str"}],
        "operations": [],
    }


def test_a_long_chain_builds_in_linear_size_and_time() -> None:
    """Each step merges the previous step's data and reply only: templates do not grow with the
    chain (they used to merge every earlier reply: 100 services took 11 s, 2,000 hours)."""
    started = time.perf_counter()
    wf = load_definition(_chain(2000)).workflow
    assert time.perf_counter() - started < 30  # about 4 s on a busy 2-core machine; was hours
    templates = [step["http"]["json"] for step in wf.spec["steps"].values()]
    assert templates[0] == "{{ input }}"
    assert templates[1] == "{{ merge(steps.upper.request.json, steps.upper.output.body) }}"
    assert max(len(t) for t in templates) < 100
    assert wf.spec["output"].startswith("{{ (merge(steps.upper_2000.request.json")


def test_the_chain_length_is_bounded_by_max_steps() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(_chain(2001))
    assert problems(info) == {
        "services": "2001 services; the limit is 2000 (legato serve --max-steps)"
    }


def test_an_output_typed_unlike_its_producer_is_an_error_naming_both_types() -> None:
    typed = {"upper": Service("upper", "http://127.0.0.1/u", outputs=MESSAGE)}
    wanted = (Field("message", "integer"),)
    found, _ = unproduced_outputs((Field("message", "integer"),), wanted, ("upper",), typed)
    assert found == [
        Problem(
            "outputs.message",
            "is declared integer, but upper, which produces it, declares it string",
        )
    ]
    counts = {"c": Service("c", "http://127.0.0.1/c", outputs=(Field("n", "integer"),))}
    for ok in ("number", "any", "integer"):  # an integer is a number
        assert unproduced_outputs((), (Field("n", ok),), ("c",), counts) == ([], [])
    silent = {**counts, "s": Service("s", "http://127.0.0.1/s")}  # may answer anything
    assert unproduced_outputs((), (Field("n", "string"),), ("c", "s"), silent)[0] == []


def test_a_json_syntax_error_is_reported_as_json_and_an_unknown_type_echoed() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(b'{"name": "t",, "services": ["a"]}')
    assert problems(info)[""].startswith("malformed JSON: ")
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "t", "services": ["a"], "inputs": {"x": "text"}})
    assert problems(info)["inputs.x.type"].startswith("'text' is not a type: must be one of")
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "t", "services": "upper"})
    assert list(problems(info)) == ["services"]  # one mistake, one problem


def test_a_machinery_service_without_address_is_told_address() -> None:
    for doc, path in (
        ({"name": "a", "inputs": [{"name": "m", "type": "str"}]}, "address"),
        ({"name": "a", "timeout": "5s"}, "base_url"),
    ):
        with pytest.raises(DefinitionError) as info:
            load_services(orjson.dumps(doc))
        assert problems(info) == {path: "is required"}, doc
    with pytest.raises(DefinitionError) as info:
        load_definition({"name": "t", "services": [{"name": "a"}]})
    assert problems(info) == {"services[0].address": "is required"}
