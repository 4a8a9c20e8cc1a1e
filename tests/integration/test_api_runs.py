"""Runs over the REST API of a real server process: start, wait, events, listing, cancel, retry."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from legato.client import ApiConflict, ApiError, ApiNotFound, AsyncClient
from tests.integration.serverprocess import ServerProcess
from tests.integration.testservice import LoopbackService

CHAIN = {
    "name": "chain",
    "inputs": [
        {"name": "who", "type": "string"},
        {"name": "n", "type": "integer", "required": False},
    ],
    "steps": {
        "greet": {"http": {"service": "svc", "path": "/echo", "json": {"who": "{{ input.who }}"}}},
        "shout": {
            "depends_on": "greet",
            "http": {
                "service": "svc",
                "path": "/echo",
                "json": {"who": "{{ steps.greet.output.body.echo.who | upper }}"},
            },
        },
    },
    "output": "{{ steps.shout.output.body.echo.who }}",
}
SLOW = {
    "name": "slow",
    "steps": {"nap": {"http": {"service": "svc", "path": "/slow", "query": {"delay": "30"}}}},
}
FLAKY = {
    "name": "flaky",
    "steps": {
        "first": {"http": {"service": "svc", "path": "/echo"}},
        "shaky": {
            "depends_on": "first",
            "retry": {"retries": 1, "delay": "10ms"},
            "http": {"service": "svc", "path": "/flaky", "query": {"fail": "{{ input.fail }}"}},
        },
    },
    "inputs": [{"name": "fail", "type": "integer"}],
}


async def test_a_run_started_with_wait_answers_with_the_whole_run(
    api: AsyncClient, service: LoopbackService
) -> None:
    await api.apply(CHAIN)
    run = await api.start("chain", {"who": "ada"}, wait=10)
    assert run["status"] == "succeeded"
    assert run["output"] == "ADA"
    assert run["input"] == {"who": "ada"}
    assert run["created_at"] and run["started_at"] and run["finished_at"]
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == ["greet", "shout"]
    greet = steps["greet"]
    assert greet["status"] == "succeeded" and greet["kind"] == "http"
    assert greet["output"]["body"]["echo"] == {"who": "ada"}
    assert greet["request"]["json"] == {"who": "ada"}
    assert [a["status"] for a in greet["attempts"]] == ["succeeded"]
    assert greet["started_at"] <= greet["finished_at"]
    assert len(service.seen("/echo")) == 2


async def test_a_run_started_without_wait_is_accepted_then_can_be_read(
    server: ServerProcess, api: AsyncClient
) -> None:
    await api.apply(CHAIN)
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/api/workflows/chain/runs", json={"input": {"who": "bo"}})
    assert answer.status_code == 202
    body = answer.json()
    assert set(body) == {"id", "status", "created_at"}
    assert answer.headers["location"] == f"/api/runs/{body['id']}"
    run = await api.wait(body["id"], timeout=10)
    assert (run["status"], run["output"]) == ("succeeded", "BO")


async def test_wait_that_runs_out_answers_202_with_the_run_so_far(
    server: ServerProcess, api: AsyncClient
) -> None:
    await api.apply(SLOW)
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/api/workflows/slow/runs?wait=0.3", json={})
    assert answer.status_code == 202
    run = answer.json()
    assert run["status"] == "running"
    assert run["steps"][0]["status"] == "running"
    cancelled = await api.cancel(run["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(ApiConflict, match="already ended"):
        await api.cancel(run["id"])
    shown = await api.run(run["id"])
    assert shown["steps"][0]["status"] == "cancelled"


async def test_the_event_form_starts_a_run_and_returns_its_id(api: AsyncClient) -> None:
    await api.apply(CHAIN)
    ack = await api.send_event("chain", {"who": "eve"})
    assert set(ack) == {"event_id", "ack_date", "status"}
    assert ack["ack_date"].endswith("Z")
    run = await api.wait(ack["event_id"], timeout=10)
    assert run["output"] == "EVE"


async def test_wrong_input_is_refused_with_each_field_named_and_no_run_stored(
    api: AsyncClient,
) -> None:
    await api.apply(CHAIN)
    before = (await api.runs(workflow="chain", limit=500))["runs"]
    with pytest.raises(ApiError) as caught:
        await api.start("chain", {"who": 7, "n": "many", "extra": True})
    err = caught.value
    assert err.status == 422 and err.kind == "invalid_input"
    assert {p["path"] for p in err.problems} == {"input.who", "input.n", "input.extra"}
    with pytest.raises(ApiError) as event_err:
        await api.send_event("chain", {"n": 1})
    assert event_err.value.problems[0]["path"] == "data.who"
    after = (await api.runs(workflow="chain", limit=500))["runs"]
    assert after == before


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/api/workflows/chain/runs", b'{"input": ', 400, "body"),
        ("/api/workflows/chain/runs", b'{"input": [1]}', 422, "input"),
        ("/api/workflows/chain/runs", b'{"inputs": {}}', 422, "inputs"),
        ("/api/workflows/chain/runs", b'{"input": {"who": "x"}, "version": "one"}', 422, "version"),
        ("/api/workflows/chain/runs?wait=soon", b"{}", 400, "wait"),
        ("/api/workflows/chain/runs?wait=-1", b"{}", 400, "wait"),
        ("/api/workflows/nope/runs", b'{"input": {}}', 404, "workflow"),
        ("/api/workflows/chain/runs", b'{"input": {"who": "x"}, "version": 99}', 404, "version"),
        ("/e/chain", b'{"who": "x"}', 422, "who"),
        ("/e/chain", b"[]", 422, "body"),
        ("/e/nope", b'{"data": {}}', 404, "workflow"),
    ],
)
async def test_bad_run_requests_get_a_4xx_naming_the_field(
    server: ServerProcess, api: AsyncClient, path: str, body: bytes, status: int, field: str
) -> None:
    await api.apply(CHAIN)
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json()["problems"][0]["path"] == field


async def test_runs_are_listed_newest_first_filtered_and_paged(api: AsyncClient) -> None:
    await api.apply({**CHAIN, "name": "paging"})
    ids = [(await api.start("paging", {"who": f"p{i}"}))["id"] for i in range(7)]
    for run_id in ids:
        await api.wait(run_id, timeout=10)
    first = await api.runs(workflow="paging", limit=3)
    assert [r["id"] for r in first["runs"]] == ids[::-1][:3]
    assert first["next_cursor"] == ids[-3]
    seen = [r["id"] async for r in api.iter_runs(workflow="paging", limit=3)]
    assert seen == ids[::-1]
    assert all(r["workflow"] == "paging" for r in first["runs"])
    succeeded = await api.runs(workflow="paging", status="succeeded", limit=500)
    assert len(succeeded["runs"]) == 7
    assert (await api.runs(workflow="paging", status="failed"))["runs"] == []
    for query, field in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("cursor=zz", "cursor"),
    ]:
        with pytest.raises(ApiError) as caught:
            await _get(api, f"/api/runs?{query}")
        assert caught.value.status == 400 and caught.value.problems[0]["path"] == field


async def _get(api: AsyncClient, path: str) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        answer = await http.get(path)
    if answer.status_code >= 400:
        raise ApiError(answer.status_code, answer.json())


async def test_unknown_runs_are_404(api: AsyncClient) -> None:
    for call in (api.run, api.cancel, api.retry):
        with pytest.raises(ApiNotFound):
            await call("0" * 32)
        with pytest.raises(ApiNotFound):
            await call("not-an-id")


async def test_a_failed_run_retries_from_its_failed_step(
    api: AsyncClient, service: LoopbackService
) -> None:
    await api.apply(FLAKY)
    run = await api.start("flaky", {"fail": 3}, wait=10)  # two tries, three failures: fails
    assert run["status"] == "failed"
    shaky = next(s for s in run["steps"] if s["name"] == "shaky")
    assert [a["status"] for a in shaky["attempts"]] == ["failed", "failed"]
    assert shaky["error"]["kind"] == "5xx"
    with pytest.raises(ApiConflict):
        await api.cancel(run["id"])
    again = await api.retry(run["id"])
    assert again["status"] in ("running", "succeeded")
    done = await api.wait(run["id"], timeout=10)
    assert done["status"] == "succeeded"
    assert len(service.seen("/echo")) == 1  # the step that had succeeded was not called again
    shaky = next(s for s in done["steps"] if s["name"] == "shaky")
    # The retry gave the step a fresh budget: a third failure, then success; all four are history.
    assert [a["status"] for a in shaky["attempts"]] == ["failed", "failed", "failed", "succeeded"]
    with pytest.raises(ApiConflict, match="only failed or cancelled"):
        await api.retry(run["id"])


async def test_many_runs_started_at_once_all_finish(api: AsyncClient) -> None:
    await api.apply({**CHAIN, "name": "burst"})
    started = await asyncio.gather(*(api.start("burst", {"who": f"b{i}"}) for i in range(100)))
    runs = await asyncio.gather(*(api.wait(s["id"], timeout=30) for s in started))
    assert [r["output"] for r in runs] == [f"B{i}" for i in range(100)]


async def test_edge_run_requests_get_a_4xx(server: ServerProcess, api: AsyncClient) -> None:
    await api.apply(CHAIN)
    deep = "[" * 300 + "]" * 300
    cases = [
        (b'{"input": {"who": "x"}, "version": 9223372036854775808}', 422, "version"),
        (b'{"input": {"who": "x"}, "version": 18446744073709551615}', 422, "version"),
        (b'{"input": {"who": "x", "n": 1, "deep": ' + deep.encode() + b"}}", 422, "body"),
    ]
    async with httpx.AsyncClient(base_url=server.url) as http:
        for body, status, field in cases:
            answer = await http.post("/api/workflows/chain/runs", content=body)
            assert answer.status_code == status, answer.text
            assert answer.json()["problems"][0]["path"] == field


async def test_reading_a_run_with_wait_shows_it_as_it_is_after_the_wait(api: AsyncClient) -> None:
    await api.apply(
        {
            "name": "two-naps",
            "steps": {
                "a": {"http": {"service": "svc", "path": "/slow", "query": {"delay": "0.2"}}},
                "b": {
                    "depends_on": "a",
                    "http": {"service": "svc", "path": "/slow", "query": {"delay": "5"}},
                },
            },
        }
    )
    started = await api.start("two-naps", {})
    run = await api.run(started["id"], wait=1)  # a has ended by then, b has not
    steps = {s["name"]: s["status"] for s in run["steps"]}
    assert steps == {"a": "succeeded", "b": "running"}
    await api.cancel(started["id"])
