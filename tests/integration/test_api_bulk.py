"""Bulk cancel and retry through a real server: the API (`POST /api/runs:cancel`, `:retry`), the
Python client and the command line; an empty or bad filter is refused with a 422 naming the field; and
`legato serve --max-depth` bounds a workflow that starts itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from legato.client import AsyncClient, Client
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.test_cli_remote import legato

SLOW = {"name": "bulk-slow", "tags": ["bulky"], "steps": {"w": {"wait": "60s"}}}
OTHER = {"name": "bulk-other", "steps": {"w": {"wait": "60s"}}}
PARENT = {"name": "bulk-parent", "steps": {"c": {"workflow": "bulk-slow"}}}


async def statuses(api: AsyncClient, workflow: str) -> list[str]:
    return [r["status"] for r in (await api.runs(workflow=workflow, limit=500))["runs"]]


async def until_status(api: AsyncClient, workflow: str, status: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while (await statuses(api, workflow)).count(status) < count:
        assert time.monotonic() < deadline, await statuses(api, workflow)
        await asyncio.sleep(0.05)


async def test_cancel_then_retry_every_run_a_filter_matches(api: AsyncClient) -> None:
    await api.apply(SLOW)
    await api.apply(OTHER)
    await api.apply(PARENT)
    slow = [(await api.start("bulk-slow"))["id"] for _ in range(4)]
    other = (await api.start("bulk-other"))["id"]
    parent = (await api.start("bulk-parent"))["id"]
    await until_status(api, "bulk-slow", "running", 5)  # with the parent's child

    found = await api.cancel_runs(workflow="bulk-parent", status="running")
    assert found["count"] == 2 and parent in found["ids"]
    assert (await api.run(parent))["status"] == "cancelled"
    assert sorted(await statuses(api, "bulk-slow")) == ["cancelled", *["running"] * 4]

    found = await api.cancel_runs(tag="bulky", status="running")
    assert found["count"] == 4 and sorted(found["ids"]) == sorted(slow)
    assert (await api.run(other))["status"] == "running"

    after = datetime.fromtimestamp(time.time() - 3600, UTC)  # the client sends ISO 8601
    found = await api.retry_runs(workflow="bulk-slow", status="cancelled", created_after=after)
    assert found["count"] == 5  # the four, and the parent's child
    await until_status(api, "bulk-slow", "running", 5)
    again = await api.retry_runs(workflow="bulk-slow", status="cancelled")
    assert again == {"count": 0, "ids": []}

    later = time.time() + 3600
    assert (await api.cancel_runs(created_after=later))["count"] == 0
    found = await api.cancel_runs(created_before=later, status="running")
    assert found["count"] == 6
    assert (await api.run(other))["status"] == "cancelled"


def test_an_empty_or_bad_filter_is_refused_naming_the_field(server: ServerProcess) -> None:
    for route in ("/api/runs:cancel", "/api/runs:retry"):
        for body, field in (
            ({}, "body"),
            ({"all": "yes"}, "all"),
            ({"status": "sleeping"}, "status"),
            ({"workflow": "no such name!"}, "workflow"),
            ({"tag": ""}, "tag"),
            ({"created_after": "yesterday"}, "created_after"),
            ({"created_before": [1]}, "created_before"),
            ({"created_before": True}, "created_before"),
            ({"id": "x"}, "id"),
        ):
            answer = httpx.post(server.url + route, json=body)
            assert answer.status_code == 422, (route, body, answer.text)
            assert answer.json()["problems"][0]["path"] == field, (route, body)
    refused = httpx.post(server.url + "/api/runs:retry", json={"status": "running"})
    assert refused.status_code == 422 and "failed, cancelled" in refused.json()["message"]
    assert httpx.post(server.url + "/api/runs:cancel", content=b"[").status_code == 400


def test_all_true_means_every_run(server: ServerProcess) -> None:
    with Client(server.url) as client:
        client.apply({"name": "bulk-all", "steps": {"w": {"wait": "60s"}}})
        run = client.start("bulk-all")["id"]
        found = client.cancel_runs(all_runs=True)
        assert run in found["ids"] or found["count"] > len(found["ids"])
        assert client.run(run)["status"] == "cancelled"


async def test_the_command_line_cancels_and_retries_by_filter(
    server: ServerProcess, api: AsyncClient
) -> None:
    await api.apply({"name": "bulk-cli", "steps": {"w": {"wait": "60s"}}})
    ids = [(await api.start("bulk-cli"))["id"] for _ in range(3)]
    await until_status(api, "bulk-cli", "running", 3)
    code, out, err = await legato(server, "cancel", "--workflow", "bulk-cli", "--status", "running")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "cancelled 3 run(s)" and sorted(lines[1:]) == sorted(ids)
    code, out, err = await legato(server, "retry", "--workflow", "bulk-cli")
    assert code == 0 and out.splitlines()[0] == "retrying 3 run(s)", err
    code, _, err = await legato(server, "cancel")
    assert code == 2 and "give a RUN_ID, or a filter" in err
    code, _, err = await legato(server, "cancel", ids[0], "--workflow", "bulk-cli")
    assert code == 2 and "not both" in err
    code, _, err = await legato(server, "cancel", "--status", "sleeping")
    assert code == 2 and "status" in err


@pytest.fixture(scope="module")
def shallow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("shallow"),
        "--max-depth",
        "3",
        env={"LEGATO_MAX_DESCENDANTS": "50"},
        name="shallow",
    )
    yield proc
    proc.stop()


def test_the_server_bounds_a_workflow_that_starts_itself(shallow: ServerProcess) -> None:
    with Client(shallow.url) as client:
        client.apply({"name": "rec-self", "steps": {"me": {"workflow": "rec-self"}}})
        run: dict[str, Any] = client.start("rec-self", wait=30)
        assert run["status"] == "failed"
        time.sleep(0.5)
        runs = client.runs(workflow="rec-self", limit=500)["runs"]
        assert len(runs) == 4  # the root and 3 levels
        deepest = client.run(runs[0]["id"])
        assert deepest["steps"][0]["error"] == {
            "kind": "limit",
            "message": "sub-workflow depth 3 reached (limit max_depth)",
        }
