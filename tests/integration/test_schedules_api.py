"""Schedules through a real server process: listed with their next fire time, paused and unpaused
by API and CLI, and a manual trigger whose configuration templates read."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import orjson
import pytest

from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.test_cli_remote import legato


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The module's server, giving up on a notification after 3 tries (0.5 s, then 1 s apart)."""
    proc = start_server(
        tmp_path_factory.mktemp("server"), "--max-body", "65536", env={"LEGATO_NOTIFY_TRIES": "3"}
    )
    yield proc
    proc.stop()


async def run_count(api: AsyncClient, workflow: str) -> int:
    page = await api.runs(workflow=workflow, limit=500)
    return len(page["runs"])


async def test_pause_and_unpause_by_cli_and_api(server: ServerProcess, api: AsyncClient) -> None:
    await api.apply(
        {
            "name": "api-tick",
            "schedule": "1s",
            "tags": ["nightly"],
            "steps": {"nap": {"wait": "10ms"}},
        }
    )
    [entry] = [s for s in await api.schedules() if s["workflow"] == "api-tick"]
    assert entry["schedule"] == "1s" and entry["paused"] is False and entry["tags"] == ["nightly"]
    fire = datetime.fromisoformat(entry["next_fire"]).timestamp()
    assert time.time() - 2 < fire < time.time() + 2
    deadline = time.monotonic() + 10
    while await run_count(api, "api-tick") < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)

    code, out, err = await legato(server, "pause", "api-tick")
    assert (code, out.strip()) == (0, "api-tick paused"), err
    code, out, err = await legato(server, "schedules")
    assert code == 0 and "api-tick" in out and "paused" in out
    await asyncio.sleep(0.5)
    count = await run_count(api, "api-tick")
    await asyncio.sleep(2.2)
    assert await run_count(api, "api-tick") == count

    unpaused = await api.unpause("api-tick")
    assert unpaused["paused"] is False and unpaused["next_fire"] is not None
    deadline = time.monotonic() + 10
    while await run_count(api, "api-tick") < count + 2:  # catchup: the paused intervals run too
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    paused = await api.pause("api-tick")
    assert paused["paused"] is True and paused["next_fire"] is None
    code, out, err = await legato(server, "schedules", "--json")
    assert [s["paused"] for s in orjson.loads(out) if s["workflow"] == "api-tick"] == [True]


async def test_a_manual_trigger_passes_its_conf_as_input(
    server: ServerProcess, api: AsyncClient
) -> None:
    await api.apply(
        {
            "name": "api-manual",
            "schedule": "@daily",
            "inputs": {"region": {"type": "string", "default": "eu"}},
            "steps": {"nap": {"wait": "10ms"}},
            "output": "{{ input.region }} {{ input.schedule.manual }}",
        }
    )
    started = await api.trigger("api-manual", {"region": "us"})
    run = await api.wait(started["id"], timeout=10)
    assert run["status"] == "succeeded" and run["output"] == "us True"
    code, out, err = await legato(server, "trigger", "api-manual", "--conf", '{"region": "ap"}')
    assert code == 0, err
    run = await api.wait(out.strip(), timeout=10)
    assert run["output"] == "ap True"


async def test_refusals_name_the_field(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        missing = await http.post("/api/schedules/no-such/pause")
        assert missing.status_code == 404 and missing.json()["problems"][0]["path"] == "name"
        await http.post(
            "/api/workflows",
            json={"name": "api-conf", "inputs": {"n": "integer"}, "steps": {"a": {"wait": "1ms"}}},
        )
        bad = await http.post("/api/workflows/api-conf/trigger", json={"conf": {"n": "x"}})
        assert bad.status_code == 422
        assert bad.json()["problems"][0]["path"] == "input.n"
        extra = await http.post("/api/workflows/api-conf/trigger", json={"config": {}})
        assert extra.status_code in (400, 422) and extra.json()["problems"][0]["path"] == "config"
        nothing = await http.post("/api/workflows/nope/trigger", json={})
        assert nothing.status_code == 404 and nothing.json()["problems"][0]["path"] == "name"


async def test_a_runs_failed_notifications_are_listed(api: AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await api.apply(
        {
            "name": "api-unheard",
            "webhooks": [{"url": f"http://127.0.0.1:{port}/hook", "on": ["success"]}],
            "steps": {"nap": {"wait": "10ms"}},
        }
    )
    started = await api.start("api-unheard")
    run = await api.wait(started["id"], timeout=10)
    assert run["status"] == "succeeded"
    deadline = time.monotonic() + 15  # three tries with backoff
    while not (found := await api.notifications(started["id"])):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    [row] = found
    assert (row["event"], row["channel"], row["ok"], row["tries"]) == (
        "success",
        "webhook",
        False,
        3,
    )
    assert row["error"]


async def test_runs_are_filtered_by_tag(server: ServerProcess, api: AsyncClient) -> None:
    for name, labels in (("api-tag-a", ["finance", "daily"]), ("api-tag-b", ["finance"])):
        await api.apply({"name": name, "tags": labels, "steps": {"a": {"wait": "1ms"}}})
        await api.wait((await api.start(name))["id"], timeout=10)
    await api.apply({"name": "api-tag-c", "steps": {"a": {"wait": "1ms"}}})
    await api.wait((await api.start("api-tag-c"))["id"], timeout=10)
    tags = {t["tag"]: t["workflows"] for t in await api.tags()}
    assert tags["finance"] == ["api-tag-a", "api-tag-b"] and tags["daily"] == ["api-tag-a"]
    page = await api.runs(tag="finance", limit=500)
    assert {r["workflow"] for r in page["runs"]} == {"api-tag-a", "api-tag-b"}
    assert (await api.runs(tag="no-such-tag"))["runs"] == []
    code, out, err = await legato(server, "runs", "--tag", "daily")
    assert code == 0 and "api-tag-a" in out and "api-tag-b" not in out, err
    code, out, err = await legato(server, "tags")
    assert code == 0 and "api-tag-a, api-tag-b" in out
    async with httpx.AsyncClient(base_url=server.url) as http:
        bad = await http.get("/api/runs", params={"tag": "not a tag"})
        assert bad.status_code == 400 and bad.json()["problems"][0]["path"] == "tag"
