"""machinery's README example, as its users would run it: the service files and the workflow as
written, real local upper/reverse/space-counter services, a real server (and worker), the `legato`
command, and `POST /e/{workflow}?wait=S`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from legato import Engine
from legato.errors import DefinitionError
from legato.formats import load_definition
from legato.formats.loader import load_services
from legato.model.service import Service
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.test_cli import ROOT, _run_async

EXAMPLES = ROOT / "examples" / "machinery"
WORKFLOW = EXAMPLES / "workflow-process-text.json"
EVENT = orjson.loads((EXAMPLES / "event-text.json").read_bytes())
EXPECTED = {"message": "! GNINROM EHT NI ESIR LLIW NUS EHT", "space_count": 7}


def _sample_services() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "machinery_sample_services", EXAMPLES / "sample_services.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def text_services() -> AsyncIterator[int]:
    """examples/machinery/sample_services.py on a free port; yields the port."""
    runner: web.AppRunner
    runner, port = await _sample_services().start(0)
    yield port
    await runner.cleanup()


def filed(name: str, port: int, **change: Any) -> dict[str, Any]:
    """The example's service file, as written, listening on the test's port."""
    [entry] = load_services((EXAMPLES / f"service-{name}.json").read_bytes())
    entry["address"] = entry["address"].replace(":5000/", f":{port}/")
    return {**entry, **change}


def broken_space_counter(port: int) -> dict[str, Any]:
    """machinery's mistake: space-counter declares `message`, the workflow wants `space_count`."""
    entry = filed("space-counter", port)
    entry["outputs"] = [{"name": "message", "type": "string", "description": "copied"}]
    return entry


# -- in-process: the engine refuses the broken example at registration -----------------------


async def test_engine_registers_and_runs_the_seed_or_refuses_the_broken_one(
    db_url: str, text_services: int
) -> None:
    async with Engine.open(db_url) as engine:
        for name in ("upper", "reverse"):
            await engine.put_service(Service.from_dict(filed(name, text_services)))
        await engine.put_service(Service.from_dict(broken_space_counter(text_services)))
        with pytest.raises(DefinitionError) as info:
            await engine.register(load_definition(WORKFLOW.read_bytes()))
        [problem] = info.value.problems
        assert problem.path == "outputs.space_count"
        assert "space-counter declares message" in problem.message
        assert await engine.store.list_workflows() == []  # nothing stored

        await engine.put_service(Service.from_dict(filed("space-counter", text_services)))
        record = await engine.apply(WORKFLOW.read_bytes())
        assert record.warnings == ()
        state = await engine.run("process-text", EVENT["data"], timeout=20)
        assert state.info.status == "succeeded", state.info.error
        assert state.info.output == EXPECTED


async def test_a_service_with_no_declared_outputs_is_a_warning(
    db_url: str, text_services: int
) -> None:
    async with Engine.open(db_url) as engine:
        for name in ("upper", "reverse"):
            await engine.put_service(Service.from_dict(filed(name, text_services)))
        silent = {k: v for k, v in filed("space-counter", text_services).items() if k != "outputs"}
        await engine.put_service(Service.from_dict(silent))
        record = await engine.apply(WORKFLOW.read_bytes())
        assert len(record.warnings) == 1
        assert "space-counter declares no outputs" in record.warnings[0]
        state = await engine.run("process-text", EVENT["data"], timeout=20)
        assert state.info.output == EXPECTED


# -- through a real server, with the legato command ------------------------------------------


async def legato(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    return await _run_async(*args, "--url", server.url)


async def test_cli_adds_service_files_applies_and_the_event_waits(
    server: ServerProcess, text_services: int, tmp_path: Path
) -> None:
    files = []
    for name in ("upper", "reverse", "space-counter"):
        path = tmp_path / f"service-{name}.json"
        path.write_bytes(orjson.dumps(filed(name, text_services), option=orjson.OPT_INDENT_2))
        files += ["--file", str(path)]
    broken = tmp_path / "broken.json"
    broken.write_bytes(orjson.dumps(broken_space_counter(text_services)))
    code, out, err = await legato(
        server, "service", "add", "--replace", *files[:4], "--file", str(broken)
    )
    assert code == 0, err
    code, out, err = await legato(server, "apply", str(WORKFLOW))
    assert code == 2
    assert "outputs.space_count: no service declares producing 'space_count'" in err
    assert "space-counter declares message" in err and "Traceback" not in err

    code, out, err = await legato(server, "service", "add", "--replace", *files)
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["upper", "reverse", "space-counter"]
    code, out, err = await legato(server, "apply", str(WORKFLOW))
    assert code == 0, err
    assert out.startswith("process-text v")

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        answer = await http.post("/e/process-text", params={"wait": "10"}, json=EVENT)
        assert answer.status_code == 200, answer.text
        run = answer.json()
        assert run["status"] == "succeeded"
        assert run["output"] == EXPECTED
        assert run["event_id"] == run["id"] and run["ack_date"]
        assert [s["name"] for s in run["steps"]] == ["upper", "reverse", "space_counter"]

        plain = await http.post("/e/process-text", json=EVENT)
        assert plain.status_code == 202
        assert set(plain.json()) == {"event_id", "ack_date", "status"}

        for bad in ("61", "-1", "soon", "nan", ""):
            refused = await http.post("/e/process-text", params={"wait": bad}, json=EVENT)
            assert refused.status_code == 400, bad
            assert refused.json()["problems"][0]["path"] == "wait"


async def test_an_event_that_outlasts_its_wait_is_202_with_its_id(
    server: ServerProcess, tmp_path: Path
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.json_response({"message": "late"})

    app = web.Application()
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            service = {"name": "m-slow", "address": f"http://127.0.0.1:{port}/slow"}
            assert (await http.put("/api/services/m-slow", json=service)).status_code in (200, 201)
            wf = {"name": "m-slow-text", "services": ["m-slow"], "operations": []}
            assert (await http.post("/api/workflows", json=wf)).status_code in (200, 201)
            answer = await http.post("/e/m-slow-text", params={"wait": "0.2"}, json={"data": {}})
            assert answer.status_code == 202
            event_id = answer.json()["event_id"]
            run = (await http.get(f"/api/runs/{event_id}", params={"wait": "10"})).json()
            assert run["status"] == "succeeded" and run["output"] == {"message": "late"}
    finally:
        await runner.cleanup()


async def test_the_api_lists_every_problem_of_the_document_at_once(server: ServerProcess) -> None:
    doc = orjson.loads(WORKFLOW.read_bytes())
    doc["name"] = "m-bad"
    doc["inputs"][0]["type"] = "text"
    doc["operations"] = ["split"]
    doc["services"].append("m-nowhere")
    doc["colour"] = "blue"
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        answer = await http.post("/api/workflows", json=doc)
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "invalid_definition"
    assert {p["path"] for p in body["problems"]} == {
        "inputs[0].type",
        "operations",
        "services[3]",
        "colour",
    }


async def test_the_example_script_runs_against_the_server(server: ServerProcess) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "run_machinery.py"),
        "--url",
        server.url,
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"succeeded: {json.dumps(EXPECTED)}" in text
    assert "refused: invalid definition:" in text
    assert "outputs.space_count: no service declares producing 'space_count'" in text
    # the example's mistake keeps space_count's type: that is named too
    assert "outputs.message: is declared string, but space-counter" in text


# -- several processes sharing PostgreSQL: the run ends on a worker ---------------------------


async def test_the_event_waits_for_a_run_a_worker_ends(
    shared_db: str, text_services: int, tmp_path: Path
) -> None:
    front = start_server(tmp_path, "--api-only", db=shared_db, name="front")
    worker: ServerProcess | None = None
    try:
        async with httpx.AsyncClient(base_url=front.url, timeout=30) as http:
            for name in ("upper", "reverse", "space-counter"):
                put = await http.put(f"/api/services/{name}", json=filed(name, text_services))
                assert put.status_code in (200, 201), put.text
            applied = await http.post("/api/workflows", content=WORKFLOW.read_bytes())
            assert applied.status_code == 201, applied.text
            worker = start_server(tmp_path, db=shared_db, name="worker", command="worker")
            answer = await http.post("/e/process-text", params={"wait": "20"}, json=EVENT)
            assert answer.status_code == 200, answer.text
            assert answer.json()["output"] == EXPECTED
    finally:
        if worker is not None:
            worker.stop()
        front.stop()


# -- bounded: past the cap, an event is answered at once ---------------------------------------


async def test_waiters_past_the_cap_get_202_at_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from legato.server import routes
    from legato.server.app import create_app

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({"message": "late"})

    app = web.Application()
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    monkeypatch.setattr(routes, "MAX_EVENT_WAITERS", 1)
    try:
        async with Engine.open(db_url) as engine:
            await engine.put_service(
                Service.from_dict({"name": "m-slow", "address": f"http://127.0.0.1:{port}/slow"})
            )
            await engine.apply({"name": "m-capped", "services": ["m-slow"], "operations": []})
            await engine.apply(
                {"name": "m-typed", "services": ["m-slow"], "inputs": {"message": "str"}}
            )
            transport = httpx.ASGITransport(app=create_app(engine, own_engine=False))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                first = asyncio.create_task(
                    http.post("/e/m-capped", params={"wait": "10"}, json={"data": {}})
                )
                await asyncio.sleep(0.3)  # the first is waiting now
                second = await http.post("/e/m-capped", params={"wait": "10"}, json={"data": {}})
                assert second.status_code == 202
                assert second.json()["wait"].startswith("not waited: 1 events are waiting")
                assert not first.done()
                answer = await first
                assert answer.status_code == 200, answer.text
                assert answer.json()["output"] == {"message": "late"}
                waited = await engine.wait(second.json()["event_id"], 10)
                assert waited.info.status == "succeeded"
                missing = await http.post("/e/m-typed", json={"data": {}})
                assert missing.status_code == 422, missing.text
                assert [p["path"] for p in missing.json()["problems"]] == ["data.message"]
    finally:
        await runner.cleanup()


async def test_an_inline_service_may_not_change_a_shared_one(
    db_url: str, text_services: int
) -> None:
    """A document's `{name, address}` adds a service or repeats it exactly; changing one that
    other workflows call is `legato service add --replace`'s job, never a side effect."""
    upper = filed("upper", text_services)
    doc = {
        "name": "hijack",
        "services": ["reverse", {"name": "upper", "address": "http://127.0.0.1:1/echo"}],
        "inputs": [{"name": "message", "type": "str"}],
        "operations": [],
    }
    async with Engine.open(db_url) as engine:
        await engine.put_service(Service.from_dict(upper))
        await engine.put_service(Service.from_dict(filed("reverse", text_services)))
        with pytest.raises(DefinitionError) as info:
            await engine.apply(orjson.dumps(doc))
        [problem] = info.value.problems
        assert problem.path == "services[1]"
        assert "service 'upper' is already in the directory" in problem.message
        assert "--replace" in problem.message
        assert engine.service("upper") == Service.from_dict(upper)  # unchanged
        assert await engine.store.list_workflows() == []

        doc["services"] = ["reverse", upper]  # the same entry: accepted
        await engine.apply(orjson.dumps(doc))
        state = await engine.run("hijack", {"message": "ab"}, timeout=20)
        assert state.info.status == "succeeded", state.info.error
        assert state.info.output == {"message": "BA"}


async def test_service_add_of_a_set_is_all_or_nothing(
    server: ServerProcess, text_services: int, tmp_path: Path
) -> None:
    def write(name: str, data: Any) -> str:
        path = tmp_path / name
        path.write_bytes(orjson.dumps(data))
        return str(path)

    upper = write("upper.json", {**filed("upper", text_services), "name": "aon-up"})
    s6 = write("s6.json", {"name": "aon-s6", "address": "http://127.0.0.1:1/"})
    code, out, err = await legato(server, "service", "add", "--file", upper)
    assert code == 0, err

    async def names() -> list[str]:
        code, out, err = await legato(server, "service", "list", "--json")
        assert code == 0, err
        return [s["name"] for s in json.loads(out) if s["name"].startswith("aon-")]

    code, out, err = await legato(server, "service", "add", "--file", s6, "--file", upper)
    assert code == 2 and out == ""
    assert f"{upper}: name: service 'aon-up' exists" in err and "--replace" in err
    assert await names() == ["aon-up"]  # s6 not written either

    code, out, err = await legato(server, "service", "add", "--file", s6, "--file", s6)
    assert code == 2 and f"service 'aon-s6' is also in {s6}" in err
    twice = write(
        "twice.json",
        [{"name": "aon-s2", "address": "http://a/"}, {"name": "aon-s2", "address": "http://b/"}],
    )
    code, out, err = await legato(server, "service", "add", "--file", twice)
    assert code == 2 and f"{twice}: [1].name: service 'aon-s2' is also in {twice}: [0]" in err
    assert await names() == ["aon-up"]

    # Refused by the server part-way (a body over its limit): what was added goes again.
    huge = write(
        "huge.json", {"name": "aon-huge", "address": "http://a/", "description": "x" * 2**21}
    )
    code, out, err = await legato(server, "service", "add", "--file", s6, "--file", huge)
    assert code == 2 and "removed again: aon-s6" in err, err
    assert await names() == ["aon-up"]

    code, out, err = await legato(
        server, "service", "add", "--replace", "--file", s6, "--file", upper
    )
    assert code == 0, err
    assert await names() == ["aon-s6", "aon-up"]

    # --replace: a brand-new service goes again, a replaced one is named (it cannot be restored).
    fresh = write("fresh.json", {"name": "aon-fresh", "address": "http://127.0.0.1:1/"})
    code, out, err = await legato(
        server, "service", "add", "--replace", "--file", fresh, "--file", upper, "--file", huge
    )
    assert code == 2 and "removed again: aon-fresh" in err, err
    assert "replaced, and not restored: aon-up" in err
    assert await names() == ["aon-s6", "aon-up"]
    code, out, err = await legato(server, "service", "rm", "aon-s6")
    assert code == 0 and "removed aon-s6" in out, err
    assert await names() == ["aon-up"]


async def test_a_rollback_that_fails_tries_every_delete_and_names_what_is_left(
    tmp_path: Path,
) -> None:
    """Review 5, 5: an API that refuses the third service and then every DELETE (a store gone
    down meanwhile). Both deletes are tried, both services are named as left behind, and the error
    that stopped the set is the one reported."""
    have: dict[str, Any] = {}
    deletes: list[str] = []

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"services": list(have.values())})

    async def add(request: web.Request) -> web.Response:
        body = await request.json()
        if body["name"] == "rb-3":
            error = {"error": "invalid", "message": "rb-3 is refused for this test"}
            return web.json_response(error, status=422)
        have[body["name"]] = {"name": body["name"], "base_url": "http://127.0.0.1:1/"}
        return web.json_response(have[body["name"]], status=201)

    async def delete(request: web.Request) -> web.Response:
        deletes.append(request.match_info["name"])
        error = {"error": "unavailable", "message": "the database is unavailable"}
        return web.json_response(error, status=503)

    app = web.Application()
    app.router.add_get("/api/services", listing)
    app.router.add_post("/api/services", add)
    app.router.add_delete("/api/services/{name}", delete)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    files = []
    for i in (1, 2, 3):
        path = tmp_path / f"rb{i}.json"
        path.write_bytes(orjson.dumps({"name": f"rb-{i}", "address": "http://127.0.0.1:1/"}))
        files += ["--file", str(path)]
    try:
        code, out, err = await _run_async(
            "service", "add", *files, "--url", f"http://127.0.0.1:{port}"
        )
    finally:
        await runner.cleanup()
    assert code == 2, err
    assert deletes == ["rb-1", "rb-2"] and out.split()[::2] == ["rb-1", "rb-2"]
    assert "left behind (remove with `legato service rm NAME`): rb-1 (" in err
    assert "rb-2 (" in err and "database is unavailable" in err
    assert "rb-3 is refused for this test" in err.splitlines()[-1], err
    assert "removed again" not in err
