"""Property-based tests against a real server: no request, however malformed, gets a 500.

Schemathesis generates requests from the server's own OpenAPI document (valid and invalid ones) for
every operation; Hypothesis then aims at the two bodies with the most structure: workflow definitions
(mutated from a valid one) and run inputs (any JSON at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from legato.server import openapi
from tests.integration.serverprocess import ServerProcess, start_server

ORDER = {
    "name": "fuzz-order",
    "inputs": [
        {"name": "order_id", "type": "string"},
        {"name": "amount", "type": "number"},
        {"name": "items", "type": "array", "required": False},
    ],
    "steps": {
        "reserve": {
            "http": {"service": "svc", "path": "/reserve", "json": {"id": "{{ input.order_id }}"}}
        },
        "charge": {
            "depends_on": "reserve",
            "retry": {"retries": 2, "delay": "10ms"},
            "http": {"service": "svc", "path": "/charge", "json": {"amount": "{{ input.amount }}"}},
        },
    },
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("fuzz"), "--max-body", "20000", name="fuzz")
    httpx.put(
        server.url + "/api/services/svc", json={"name": "svc", "base_url": "http://127.0.0.1:9"}
    )
    assert httpx.post(server.url + "/api/workflows", json=ORDER).status_code in (200, 201)
    yield server
    server.stop()
    assert "Traceback" not in server.output(), server.output()


# The document the server serves (test_api_operations checks the routes it lists answer).
schema = schemathesis.openapi.from_dict(openapi.build())


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_500(case: Any, fuzzed: ServerProcess) -> None:
    case.call_and_validate(base_url=fuzzed.url, checks=[not_a_server_error])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """Replace, drop or add something somewhere in a valid definition."""
    if isinstance(value, dict) and value and depth < 5:
        key = draw(st.sampled_from(sorted(value)))
        choice = draw(st.integers(0, 3))
        out = dict(value)
        if choice == 0:
            del out[key]
        elif choice == 1:
            out[key] = draw(JSON)
        elif choice == 2:
            out[draw(st.text(max_size=8))] = draw(JSON)
        else:
            out[key] = _mutate(draw, value[key], depth + 1)
        return out
    return draw(JSON)


@st.composite
def definitions(draw: st.DrawFn) -> Any:
    return _mutate(draw, {**ORDER, "name": "mutant"})


@given(definitions())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_mutated_definitions_are_refused_cleanly_or_accepted(
    fuzzed: ServerProcess, doc: Any
) -> None:
    answer = httpx.post(fuzzed.url + "/api/workflows", json=doc)
    assert answer.status_code in (200, 201, 400, 422), answer.text
    body = answer.json()
    if answer.status_code >= 400:
        assert body["problems"] and all("path" in p for p in body["problems"])


@given(JSON)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_json_as_run_input_is_refused_cleanly_or_started(
    fuzzed: ServerProcess, data: Any
) -> None:
    answer = httpx.post(fuzzed.url + "/api/workflows/fuzz-order/runs", json={"input": data})
    assert answer.status_code in (202, 422), answer.text
    if answer.status_code == 422:
        assert answer.json()["problems"][0]["path"].startswith("input")
