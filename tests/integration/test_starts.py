"""Starts that happen once: an Idempotency-Key, a caller's run id; and a retry that answers at once.

Engine-level on both backends (`db_url`), then through a real server (SQLite, and PostgreSQL for the
concurrent case), with concurrent requests: one key must make exactly one run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from legato import Engine
from legato.client import ApiConflict, AsyncClient
from legato.engine.ids import new_run_id
from legato.engine.starts import KeyReused, Once
from legato.errors import Conflict
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.test_cli_remote import legato
from tests.integration.testservice import LoopbackService

ECHO = {
    "name": "once",
    "inputs": [{"name": "n", "type": "integer", "required": False}],
    "steps": {"a": {"http": {"service": "svc", "path": "/echo", "json": {"n": "{{ input.n }}"}}}},
}
SLOW = {"name": "once-slow", "steps": {"nap": {"wait": "10m"}}}  # live until cancelled
FAILS = {
    "name": "fails-fast",
    "steps": {"a": {"http": {"service": "svc", "path": "/status/500"}, "retry": 0}},
}


async def _runs(engine: Engine, workflow: str) -> list[str]:
    return [i.id for i in await engine.store.list_runs(workflow, None, 1000, None, None)]


# -- engine level, SQLite and PostgreSQL ------------------------------------------------------


async def test_the_same_key_and_request_answer_the_same_run(engine: Engine) -> None:
    await engine.apply(ECHO)
    first = Once("k-1", "digest-a")
    run_id = await engine.start_run("once", {"n": 1}, once=first)
    assert not first.replayed
    assert first.created_at == (await engine.get_run(run_id)).info.created_at
    again = Once("k-1", "digest-a")
    assert await engine.start_run("once", {"n": 1}, once=again) == run_id
    assert again.replayed
    with pytest.raises(KeyReused, match="another request"):
        await engine.start_run("once", {"n": 2}, once=Once("k-1", "digest-b"))
    other = await engine.start_run("once", {"n": 1}, once=Once("k-2", "digest-a"))
    assert other != run_id
    assert (await engine.wait(run_id, 10)).info.status == "succeeded"
    assert sorted(await _runs(engine, "once")) == sorted([run_id, other])


async def test_concurrent_starts_with_one_key_make_one_run(engine: Engine) -> None:
    await engine.apply(ECHO)
    ids = await asyncio.gather(
        *(engine.start_run("once", {"n": 1}, once=Once("same", "d")) for _ in range(30))
    )
    assert len(set(ids)) == 1
    assert await _runs(engine, "once") == [ids[0]]
    assert (await engine.wait(ids[0], 10)).info.status == "succeeded"


async def test_concurrent_engines_with_one_key_make_one_run(shared_db: str) -> None:
    """Two engines on one PostgreSQL database: the unique key decides, not the process."""
    async with Engine.open(shared_db) as one, Engine.open(shared_db) as two:
        await one.apply({**ECHO, "steps": {"w": {"wait": "1ms"}}})
        ids = await asyncio.gather(
            *(
                eng.start_run("once", {}, once=Once("across", "d"))
                for _ in range(15)
                for eng in (one, two)
            )
        )
        assert len(set(ids)) == 1
        assert await _runs(one, "once") == [ids[0]]


async def test_an_expired_key_starts_a_new_run_and_is_purged(engine: Engine) -> None:
    await engine.apply(ECHO)
    engine.starts.ttl = 0.2
    first = await engine.start_run("once", {}, once=Once("k", "d"))
    await asyncio.sleep(0.3)
    second = await engine.start_run("once", {}, once=Once("k", "d"))
    assert second != first
    assert await engine.store.purge_start_keys(time.time() + 1) == 1


async def test_a_callers_run_id_is_used_once(engine: Engine) -> None:
    await engine.apply(SLOW)
    run_id = new_run_id()
    assert await engine.start_run("once-slow", run_id=run_id, once=Once(run_id=run_id)) == run_id
    with pytest.raises(Conflict, match=f"run {run_id} exists and has not ended"):
        await engine.start_run("once-slow", run_id=run_id, once=Once(run_id=run_id))
    await engine.cancel(run_id)
    with pytest.raises(Conflict, match="has ended"):
        await engine.start_run("once-slow", run_id=run_id, once=Once(run_id=run_id))
    assert await _runs(engine, "once-slow") == [run_id]


async def test_concurrent_starts_with_one_run_id_make_one_run(engine: Engine) -> None:
    await engine.apply(SLOW)
    run_id = new_run_id()
    results = await asyncio.gather(
        *(
            engine.start_run("once-slow", run_id=run_id, once=Once(run_id=run_id))
            for _ in range(20)
        ),
        return_exceptions=True,
    )
    assert results.count(run_id) == 1
    assert all(isinstance(r, Conflict) for r in results if r != run_id)
    await engine.cancel(run_id)


async def test_a_retry_answers_once_applied_even_if_the_run_fails_again_at_once(
    engine: Engine,
) -> None:
    """It waited for the run to leave `failed`: a run that fails again at once never seemed to,
    so every retry took the whole 5 s."""
    await engine.apply(FAILS)
    state = await engine.run("fails-fast", {}, timeout=10)
    assert state.info.status == "failed"
    began = time.monotonic()
    await engine.retry(state.info.id)
    assert time.monotonic() - began < 2.5
    assert await engine.store.inbox([state.info.id]) == []  # applied, not merely queued
    again = await engine.wait(state.info.id, 10)
    assert again.info.status == "failed"
    assert again.steps["a"].attempt == 2


# -- through a real server ----------------------------------------------------------------------


async def _setup(url: str, service: LoopbackService) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        svc = {"name": "svc", "base_url": service.url, "timeout": 5}
        assert (await http.put("/api/services/svc", json=svc)).status_code in (200, 201)
        for wf in (ECHO, SLOW, FAILS, {**ECHO, "name": "once-trigger"}):
            assert (await http.post("/api/workflows", json=wf)).status_code in (200, 201)


async def _concurrent_starts(url: str, path: str, body: dict[str, Any], n: int = 25) -> set[str]:
    key = {"Idempotency-Key": f"burst {path}"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        answers = await asyncio.gather(*(http.post(path, json=body, headers=key) for _ in range(n)))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    return {a.json().get("id") or a.json()["event_id"] for a in answers}


async def test_api_keys_replay_refuse_and_resist_a_burst(
    server: ServerProcess, service: LoopbackService
) -> None:
    await _setup(server.url, service)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        key = {"Idempotency-Key": "order-17"}
        first = await http.post("/api/workflows/once/runs", json={"input": {"n": 1}}, headers=key)
        assert first.status_code == 202
        again = await http.post("/api/workflows/once/runs", json={"input": {"n": 1}}, headers=key)
        assert again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        other = await http.post("/api/workflows/once/runs", json={"input": {"n": 2}}, headers=key)
        assert other.status_code == 422
        assert other.json()["problems"][0]["path"] == "Idempotency-Key"
        assert first.json()["id"] in other.json()["message"]
        bad = await http.post(
            "/api/workflows/once/runs", json={}, headers={"Idempotency-Key": "x" * 300}
        )
        assert bad.status_code == 422
        assert bad.json()["problems"][0]["path"] == "Idempotency-Key"
        # Waiting for the replayed run answers it as it is.
        waited = await http.post(
            "/api/workflows/once/runs?wait=10", json={"input": {"n": 1}}, headers=key
        )
        assert waited.status_code == 200
        assert waited.json()["status"] == "succeeded"
    # A burst of the same start makes one run, on each route that starts runs.
    for path, body in (
        ("/api/workflows/once/runs", {"input": {"n": 3}}),
        ("/e/once", {"data": {"n": 4}}),
        ("/api/workflows/once-trigger/trigger", {"conf": {"n": 5}}),
    ):
        ids = await _concurrent_starts(server.url, path, body)
        assert len(ids) == 1, (path, ids)


async def test_api_a_replay_answers_the_first_created_at(
    server: ServerProcess, service: LoopbackService
) -> None:
    """The first answer's time was taken after the commit, a replay's read back: they differed."""
    await _setup(server.url, service)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for i in range(15):
            key = {"Idempotency-Key": f"when-{i}"}
            first = await http.post("/api/workflows/once-slow/runs", json={}, headers=key)
            again = await http.post("/api/workflows/once-slow/runs", json={}, headers=key)
            assert first.status_code == again.status_code == 202
            stored = (await http.get(f"/api/runs/{first.json()['id']}")).json()["created_at"]
            assert first.json()["created_at"] == again.json()["created_at"] == stored
            await http.post(f"/api/runs/{first.json()['id']}/cancel")


async def test_api_a_callers_run_id(server: ServerProcess, service: LoopbackService) -> None:
    await _setup(server.url, service)
    run_id = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        first = await http.post("/api/workflows/once-slow/runs", json={"id": run_id})
        assert first.status_code == 202
        assert first.json()["id"] == run_id
        assert (await http.get(f"/api/runs/{run_id}")).json()["workflow"] == "once-slow"
        live = await http.post("/api/workflows/once-slow/runs", json={"id": run_id})
        assert live.status_code == 409
        assert live.json()["problems"][0]["path"] == "id"
        assert run_id in live.json()["message"] and "not ended" in live.json()["message"]
        assert (await http.post(f"/api/runs/{run_id}/cancel")).status_code == 200
        ended = await http.post("/api/workflows/once-slow/runs", json={"id": run_id})
        assert ended.status_code == 409 and "has ended" in ended.json()["message"]
        reserved = new_run_id()  # the form of the ids the engine makes (and derives)
        for bad in ("order-17", "A" * 32, "0" * 32, 17, "f" * 33, reserved):
            answer = await http.post("/api/workflows/once-slow/runs", json={"id": bad})
            assert answer.status_code == 422, bad
            assert answer.json()["problems"][0]["path"] == "id"
        assert "reserved" in answer.json()["problems"][0]["message"]


async def test_api_retry_answers_at_once(server: ServerProcess, service: LoopbackService) -> None:
    await _setup(server.url, service)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        run = (await http.post("/api/workflows/fails-fast/runs?wait=10", json={})).json()
        assert run["status"] == "failed"
        began = time.monotonic()
        answer = await http.post(f"/api/runs/{run['id']}/retry")
        took = time.monotonic() - began
        assert answer.status_code == 202
        assert took < 2.5, f"the retry took {took:.2f}s to answer"


async def test_api_burst_on_postgresql(
    shared_db: str, tmp_path: Path, service: LoopbackService
) -> None:
    """Two server processes on one database, each sent the same burst: one run."""
    one = start_server(tmp_path, db=shared_db, name="one")
    two = start_server(tmp_path, db=shared_db, name="two")
    try:
        await _setup(one.url, service)
        body = {"input": {"n": 9}}
        ids = await asyncio.gather(
            *(
                _concurrent_starts(s.url, "/api/workflows/once/runs", body, 15)
                for s in (one, two, one)
            )
        )
        assert len(set().union(*ids)) == 1
    finally:
        one.stop()
        two.stop()


async def test_api_key_lifetime_is_configurable(tmp_path: Path, service: LoopbackService) -> None:
    server = start_server(tmp_path, "--idempotency-ttl", "1s")
    try:
        await _setup(server.url, service)
        key = {"Idempotency-Key": "short-lived"}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            first = await http.post("/api/workflows/once/runs", json={}, headers=key)
            await asyncio.sleep(1.2)
            second = await http.post("/api/workflows/once/runs", json={}, headers=key)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] != second.json()["id"]
    finally:
        server.stop()


async def test_cli_and_client_start_once(server: ServerProcess, service: LoopbackService) -> None:
    await _setup(server.url, service)
    args = ("start", "once", "--input", '{"n": 7}', "--idempotency-key", "cli-1")
    code, first, err = await legato(server, *args)
    assert code == 0, err
    code, again, err = await legato(server, *args)
    assert code == 0 and again == first, (first, again, err)
    run_id = uuid.uuid4().hex
    code, out, err = await legato(server, "start", "once-slow", "--id", run_id)
    assert code == 0 and out.strip() == run_id, (out, err)
    code, out, err = await legato(server, "start", "once-slow", "--id", run_id)
    assert code == 2 and run_id in err, (code, out, err)
    code, one, err = await legato(server, "trigger", "once-trigger", "--idempotency-key", "t-1")
    code, two, err = await legato(server, "trigger", "once-trigger", "--idempotency-key", "t-1")
    assert one == two and len(one.strip()) == 32, (one, two, err)
    async with AsyncClient(server.url) as client:
        a = await client.start("once", {"n": 8}, idempotency_key="client-1")
        b = await client.start("once", {"n": 8}, idempotency_key="client-1")
        assert a["id"] == b["id"]
        with pytest.raises(ApiConflict, match="has not ended"):
            await client.start("once-slow", run_id=run_id)
        e1 = await client.send_event("once", {"n": 9}, idempotency_key="client-e")
        e2 = await client.send_event("once", {"n": 9}, idempotency_key="client-e")
        assert e1["event_id"] == e2["event_id"]
        await client.cancel(run_id)
