"""The service directory and workflow definitions over the REST API of a real server process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml

from legato.client import ApiConflict, ApiError, ApiNotFound, AsyncClient
from tests.integration.serverprocess import ServerProcess

HELLO = {
    "name": "hello",
    "inputs": [{"name": "who", "type": "string"}],
    "steps": {
        "greet": {"http": {"service": "svc", "path": "/echo", "json": {"who": "{{ input.who }}"}}}
    },
    "output": "{{ steps.greet.output.body.echo.who }}",
}


async def test_services_can_be_added_listed_replaced_and_removed(api: AsyncClient) -> None:
    added = await api.add_service(
        {
            "name": "mail",
            "address": "http://127.0.0.1:9/mail",
            "inputs": [{"name": "to", "type": "string"}],
            "outputs": [{"name": "sent", "type": "boolean"}],
            "token": "s3cret",
            "headers": {"X-Api-Key": "k", "X-Team": "ops", "Accept": "application/json"},
        }
    )
    assert added["base_url"] == "http://127.0.0.1:9/mail"  # the `address` form
    assert added["token"] == "***"  # never shown back
    # Only headers on the allow-list show their value (legato.masking.SHOWN_HEADERS).
    assert added["headers"] == {"X-Api-Key": "***", "X-Team": "***", "Accept": "application/json"}
    assert added["inputs"] == [{"name": "to", "type": "string"}]
    names = [s["name"] for s in await api.services()]
    assert "mail" in names
    with pytest.raises(ApiConflict, match="PUT /api/services/mail"):
        await api.add_service({"name": "mail", "base_url": "http://127.0.0.1:9/x"})
    replaced = await api.add_service(
        {"name": "mail", "base_url": "http://127.0.0.1:9/v2"}, replace=True
    )
    assert replaced["base_url"] == "http://127.0.0.1:9/v2"
    assert (await api.service("mail"))["base_url"] == "http://127.0.0.1:9/v2"
    await api.delete_service("mail")
    with pytest.raises(ApiNotFound):
        await api.service("mail")
    with pytest.raises(ApiNotFound):
        await api.delete_service("mail")


async def test_an_invalid_service_is_refused_with_each_field_named(
    api: AsyncClient, server: ServerProcess
) -> None:
    with pytest.raises(ApiError) as caught:
        await api.add_service(
            {"name": "bad name!", "base_url": "ftp://x", "concurrency": 0, "colour": "red"}
        )
    err = caught.value
    assert err.status == 422
    paths = {p["path"] for p in err.problems}
    assert {"name", "base_url", "concurrency", "colour"} <= paths
    names = [s["name"] for s in await api.services()]
    assert "bad name!" not in names
    async with httpx.AsyncClient() as http:
        answer = await http.put(
            server.url + "/api/services/other", json={"name": "svc2", "base_url": "http://h"}
        )
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["path"] == "name"


async def test_a_service_carries_a_retry_setting_and_a_bad_one_is_named(api: AsyncClient) -> None:
    added = await api.add_service(
        {"name": "patient", "base_url": "http://127.0.0.1:9/", "retry": {"retries": 5}}
    )
    assert added["retry"] == {"retries": 5}  # as written: the other fields come from around it
    assert (await api.service("patient"))["retry"] == added["retry"]
    with pytest.raises(ApiError) as caught:
        await api.add_service(
            {"name": "impatient", "base_url": "http://127.0.0.1:9/", "retry": {"retries": -1}}
        )
    assert caught.value.status == 422
    assert [p["path"] for p in caught.value.problems] == ["retry.retries"]
    await api.delete_service("patient")


async def test_the_same_definition_keeps_its_version_and_a_changed_one_gets_the_next(
    api: AsyncClient,
) -> None:
    first = await api.apply({**HELLO, "name": "versions"})
    assert (first["name"], first["version"], first["created"]) == ("versions", 1, True)
    assert first["created_at"].endswith("Z")
    again = await api.apply(yaml.safe_dump({**HELLO, "name": "versions"}))  # same, as YAML
    assert (again["version"], again["created"]) == (1, False)
    changed = await api.apply({**HELLO, "name": "versions", "description": "now described"})
    assert (changed["version"], changed["created"]) == (2, True)
    detail = await api.workflow("versions")
    assert detail["version"] == 2
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert (await api.workflow("versions", 1))["definition"].get("description") is None
    listed = {w["name"]: w["version"] for w in await api.workflows()}
    assert listed["versions"] == 2


async def test_posting_the_same_document_answers_201_then_200(server: ServerProcess) -> None:
    doc = yaml.safe_dump({**HELLO, "name": "status-codes"})
    headers = {"Content-Type": "application/yaml"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        await http.put("/api/services/svc", json={"name": "svc", "base_url": "http://127.0.0.1:9"})
        first = await http.post("/api/workflows", content=doc, headers=headers)
        second = await http.post("/api/workflows", content=doc, headers=headers)
    assert first.status_code == 201, first.text
    assert first.headers["location"] == "/api/workflows/status-codes/versions/1"
    assert second.status_code == 200


async def test_runs_stay_on_the_version_they_started_on(api: AsyncClient) -> None:
    await api.apply({**HELLO, "name": "pinned"})
    first = await api.start("pinned", {"who": "ada"}, wait=10)
    await api.apply({**HELLO, "name": "pinned", "output": "changed"})
    second = await api.start("pinned", {"who": "bob"}, wait=10)
    old = await api.start("pinned", {"who": "cy"}, version=1, wait=10)
    assert (first["version"], first["output"]) == (1, "ada")
    assert (second["version"], second["output"]) == (2, "changed")
    assert (old["version"], old["output"]) == (1, "cy")


async def test_the_services_in_order_form_is_accepted(
    api: AsyncClient, server: ServerProcess
) -> None:
    record = await api.apply(
        {
            "name": "in-order",
            "services": ["svc", {"name": "inline", "address": "http://127.0.0.1:9/inline"}],
        }
    )
    assert record["steps"] == 2
    graph = await api.graph("in-order")
    assert [n["service"] for n in graph["nodes"]] == ["svc", "inline"]
    assert [e["source"] for e in graph["edges"]] == [graph["nodes"][0]["id"]]
    assert (await api.service("inline"))["base_url"] == "http://127.0.0.1:9/inline"


async def test_the_graph_has_nodes_edges_and_branch_conditions(api: AsyncClient) -> None:
    await api.apply(
        {
            "name": "graph",
            "steps": {
                "check": {"http": {"service": "svc", "path": "/echo"}},
                "route": {
                    "depends_on": "check",
                    "branch": {
                        "cases": [
                            {"when": "{{ steps.check.output.status == 200 }}", "then": ["ok"]}
                        ],
                        "otherwise": ["ko"],
                    },
                },
                "ok": {"http": {"service": "svc", "path": "/echo"}},
                "ko": {"fail": "no"},
                "join": {
                    "depends_on": ["ok", "ko"],
                    "trigger": "one_succeeded",
                    "http": {"service": "svc"},
                },
            },
        }
    )
    graph = await api.graph("graph")
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["check"]["kind"] == "http" and nodes["check"]["service"] == "svc"
    assert nodes["route"]["kind"] == "branch"
    assert nodes["join"]["trigger"] == "one_succeeded"
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    assert edges[("route", "ok")]["kind"] == "branch"
    assert edges[("route", "ok")]["label"] == "{{ steps.check.output.status == 200 }}"
    assert edges[("route", "ko")]["label"] == "otherwise"
    assert edges[("check", "route")]["kind"] == "after"
    assert {("ok", "join"), ("ko", "join")} <= set(edges)
    assert graph["roots"] == ["check"]
    with pytest.raises(ApiNotFound):
        await api.graph("graph", version=9)


@pytest.mark.parametrize(
    ("content_type", "body", "status", "kind", "path"),
    [
        ("application/json", b'{"name": "x", "steps": {', 400, "malformed_document", "body"),
        ("application/yaml", b"name: x\nsteps: [\n", 400, "malformed_document", "body"),
        ("application/json", b"", 400, "bad_request", "body"),
        ("application/json", b"[1, 2]", 422, "invalid_definition", ""),
        ("text/html", b"<p>hi</p>", 415, "unsupported_media_type", "body"),
        (
            "application/json",
            b'{"name": "bad", "steps": {"a": {"http": {"service": "svc"}, "retry": {"delay": "soon"}}}}',
            422,
            "invalid_definition",
            "steps.a.retry.delay",
        ),
        (
            "application/json",
            b'{"name": "bad", "steps": {"a": {"http": {"service": "nowhere"}}}}',
            422,
            "invalid_definition",
            "steps.a.http.service",
        ),
        (
            "application/json",
            b'{"name": "bad", "steps": {"a": {"python": {"function": "os:system"}}}}',
            422,
            "invalid_definition",
            "steps.a.python.function",
        ),
    ],
)
async def test_a_bad_definition_gets_a_4xx_naming_the_problem_and_stores_nothing(
    server: ServerProcess, content_type: str, body: bytes, status: int, kind: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        await http.put("/api/services/svc", json={"name": "svc", "base_url": "http://127.0.0.1:9"})
        answer = await http.post(
            "/api/workflows", content=body, headers={"Content-Type": content_type}
        )
        listed = (await http.get("/api/workflows")).json()["workflows"]
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["error"] == kind
    assert error["message"]
    assert any(p["path"].startswith(path) for p in error["problems"]), error
    assert "bad" not in [w["name"] for w in listed]


async def test_a_body_over_the_limit_is_refused_with_413(server: ServerProcess) -> None:
    big = b'{"name": "big", "description": "' + b"x" * 70_000 + b'", "steps": {}}'
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(
            "/api/workflows", content=big, headers={"Content-Type": "application/json"}
        )

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 10_000

        streamed = await http.post("/api/workflows", content=chunks())
    assert answer.status_code == 413
    assert answer.json()["problems"][0]["path"] == "body"
    assert streamed.status_code == 413  # no Content-Length: counted as it streams


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/api/services", {"name": "a", "base_url": "http://["}, 422, "base_url"),
        ("PUT", "/api/services/a", {"base_url": "http://["}, 422, "base_url"),
        ("POST", "/api/services", {"name": "sv\n", "base_url": "http://h"}, 422, "name"),
        ("POST", "/api/workflows", {"name": "abc\n", "steps": {"f": {"fail": "x"}}}, 422, "name"),
        (
            "POST",
            "/api/workflows",
            {"name": "w3", "timeout": "99999999999d", "steps": {"f": {"fail": "x"}}},
            422,
            "timeout",
        ),
        (
            "POST",
            "/api/workflows",
            {"name": "w4", "timeout": 1e308, "steps": {"f": {"fail": "x"}}},
            422,
            "timeout",
        ),
        ("GET", "/api/workflows/x/versions/%C2%B2", None, 400, "version"),
        ("GET", "/api/workflows/x/graph?version=%C2%B2", None, 400, "version"),
    ],
)
async def test_edge_values_get_a_4xx_not_a_500(
    server: ServerProcess, method: str, path: str, body: object, status: int, field: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.request(method, path, json=body)
        services = [s["name"] for s in (await http.get("/api/services")).json()["services"]]
    assert answer.status_code == status, answer.text
    assert any(p["path"] == field for p in answer.json()["problems"]), answer.json()
    assert "sv\n" not in services


async def test_a_definition_nested_too_deep_stores_nothing_not_even_its_services(
    server: ServerProcess,
) -> None:
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    doc = {
        "name": "deep",
        "services": [{"name": "inline-deep", "address": "http://127.0.0.1:9/x"}],
        "inputs": [{"name": "x", "type": "any", "required": False, "default": deep}],
    }
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(
            "/api/workflows",
            content=json.dumps(doc),  # the standard library nests deeper than orjson writes
            headers={"Content-Type": "application/json"},
        )
        service = await http.get("/api/services/inline-deep")
    assert answer.status_code in (400, 422), answer.text
    assert service.status_code == 404
