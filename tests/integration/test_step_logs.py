"""Step logs end to end: a Python step's prints, log records and traceback per attempt, through a
real Engine on each backend, and through a real server (API, callback lines, CLI, run page)."""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from legato import Engine
from legato.client import AsyncClient
from legato.store import step_logs
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.test_cli import _run_async
from tests.integration.testservice import LoopbackService

MODULE = "tests.integration.logsteps"


def workflow(name: str, path: Path, service: bool = False) -> dict[str, Any]:
    steps: dict[str, Any] = {
        "flaky": {
            "python": {
                "function": f"{MODULE}:flaky",
                "args": {"path": str(path), "token": "{{ secrets.API_KEY }}"},
            },
            "retry": {"retries": 1, "delay": "0s", "on": ["exception"]},
        },
        "silent": {"python": {"function": f"{MODULE}:silent"}},
    }
    if service:
        steps["job"] = {
            "depends_on": "flaky",
            "http": {"service": "svc", "path": "/status/202", "async": True},
        }
    return {"name": name, "steps": steps}


def _check_flaky(lines: list[tuple[int, tuple[float, str, str, str]]]) -> None:
    first = [line for attempt, line in lines if attempt == 1]
    second = [line for attempt, line in lines if attempt == 2]
    assert [(lv, src, msg) for _, lv, src, msg in first[:4]] == [
        ("INFO", "stdout", "attempt 1 starts <b>bold</b>"),
        ("INFO", "stdout", "using *** on https://bob:***@example.com/x"),
        ("INFO", "shop.orders", "order 1 checked"),
        ("WARNING", "stderr", "about to fail"),
    ]
    assert first[4][1:3] == ("ERROR", "traceback")
    assert "RuntimeError: the first attempt fails" in first[4][3]
    assert 'logsteps.py", line' in first[4][3] and "in flaky" in first[4][3]
    assert len(first) == 5
    assert [(lv, src, msg) for _, lv, src, msg in second] == [
        ("INFO", "stdout", "attempt 2 starts <b>bold</b>"),
        ("INFO", "stdout", "using *** on https://bob:***@example.com/x"),
        ("INFO", "shop.orders", "order 2 checked"),
        ("WARNING", "shop.orders", "second time lucky"),
    ]


async def test_prints_logs_and_a_traceback_are_kept_per_attempt(
    db_url: str, tmp_path: Path
) -> None:
    async with Engine.open(db_url, python_modules=[MODULE]) as engine:
        await engine.apply(workflow("logs-engine", tmp_path / "n"))
        run = await engine.run("logs-engine", {}, timeout=20)
        assert run.info.status == "succeeded", run.info.error
        assert run.steps["flaky"].attempt == 2
        chunks = await engine.store.get_logs(run.info.id)
        assert {(c.step, c.attempt) for c in chunks} == {("flaky", 1), ("flaky", 2)}  # silent: none
        _check_flaky([(c.attempt, line) for c in chunks for line in c.lines])
        only = await engine.store.get_logs(run.info.id, "flaky", 2)
        assert [c.attempt for c in only] == [2]
        assert await engine.store.get_logs(run.info.id, "silent") == []
        assert await engine.store.append_logs(
            run.info.id, "flaky", 2, [(1.0, "INFO", "service", "late")], 2.0
        )
        after = await engine.store.get_logs(run.info.id, "flaky", 2, after=only[0].id)
        assert [line[3] for c in after for line in c.lines] == ["late"]
        line = [(1.0, "INFO", "service", "again")]
        kept = [
            await engine.store.append_logs(run.info.id, "job", 1, line, 2.0) for _ in range(102)
        ]
        assert kept == [True] * step_logs.MAX_CHUNKS + [False, False]  # a chatty service: cut off
        rows = await engine.store.get_logs(run.info.id, "job", limit=500)
        assert len(rows) == step_logs.MAX_CHUNKS + 1  # and one mark says so, once
        assert [line[3] for line in rows[-1].lines] == [step_logs.DROPPED]


@pytest.fixture
async def logs_server(
    db_url: str, tmp_path: Path, service: LoopbackService
) -> AsyncIterator[ServerProcess]:
    server = start_server(tmp_path, "--python-module", MODULE, db=db_url)
    async with AsyncClient(server.url) as api:
        await api.add_service({"name": "svc", "base_url": service.url, "timeout": 5})
    yield server
    server.stop()


def _path(answer: httpx.Response) -> str:
    path: str = answer.json()["problems"][0]["path"]
    return path


async def _callback(service: LoopbackService) -> tuple[str, str]:
    for _ in range(1000):
        seen = service.seen("/status/202")
        if seen:
            headers = seen[0].headers
            return headers["Legato-Callback-Url"], headers["Legato-Task-Token"]
        await asyncio.sleep(0.01)
    raise AssertionError("the service was never called")


async def test_the_api_the_cli_and_the_run_page_show_them(
    logs_server: ServerProcess, service: LoopbackService, tmp_path: Path
) -> None:
    server = logs_server
    async with AsyncClient(server.url) as api, httpx.AsyncClient() as http:
        await api.apply(workflow("logs-api", tmp_path / "n", service=True))
        run_id = (await api.start("logs-api", {}))["id"]
        url, _token = await _callback(service)
        bad_bodies = [
            ({"heartbeat": True, "logs": "text"}, "logs"),
            ({"heartbeat": True, "logs": [1]}, "logs[0]"),
            ({"heartbeat": True, "logs": [{"msg": "x"}]}, "logs[0].msg"),
            ({"heartbeat": True, "logs": [{"message": "x", "level": "LOUD"}]}, "logs[0].level"),
            ({"heartbeat": True, "logs": [{"message": "x", "ts": "now"}]}, "logs[0].ts"),
            ({"heartbeat": True, "logs": ["x"] * 1001}, "logs"),
            ({"logs": ["x"]}, "body"),
        ]
        for body, field in bad_bodies:
            answer = await http.post(url, json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert answer.json()["problems"][0]["path"] == field, answer.json()
        answer = await http.post(url, json={"heartbeat": True, "logs": ["working on it"]})
        assert answer.status_code == 200, answer.text
        lines = [{"message": "done", "level": "warning", "ts": 1_800_000_000}]
        answer = await http.post(url, json={"output": {"ok": 1}, "logs": lines})
        assert answer.status_code == 200, answer.text
        done = await api.wait(run_id, timeout=20)
        assert done["status"] == "succeeded"

        page = await api.logs(run_id)
        assert page["next_cursor"] is None and page["run_id"] == run_id
        got = [(x["step"], x["attempt"], x["level"], x["source"]) for x in page["logs"]]
        assert got[:5] == [("flaky", 1, "INFO", "stdout")] * 2 + [
            ("flaky", 1, "INFO", "shop.orders"),
            ("flaky", 1, "WARNING", "stderr"),
            ("flaky", 1, "ERROR", "traceback"),
        ]
        assert got[-2:] == [("job", 1, "INFO", "service"), ("job", 1, "WARNING", "service")]
        assert page["logs"][-1]["ts"] == "2027-01-15T08:00:00.000Z"
        assert [x["message"] for x in page["logs"][-2:]] == ["working on it", "done"]
        second = await api.logs(run_id, "flaky", attempt=2)
        assert [x["message"] for x in second["logs"]][-1] == "second time lucky"
        assert all("hunter2" not in x["message"] for x in page["logs"])

        missing = await http.get(f"{server.url}/api/runs/{'f' * 32}/logs")
        assert missing.status_code == 404 and _path(missing) == "run_id"
        loose = await http.get(f"{server.url}/api/runs/{run_id}/logs?attempt=1")
        assert loose.status_code == 400 and _path(loose) == "attempt"
        word = await http.get(f"{server.url}/api/runs/{run_id}/logs?step=flaky&attempt=x")
        assert word.status_code == 400 and _path(word) == "attempt"
        spec = (await http.get(f"{server.url}/openapi.json")).json()
        assert "/api/runs/{run_id}/logs" in spec["paths"]

        code, out, err = await _run_async("logs", run_id, "flaky", "--url", server.url)
        assert code == 0, err
        assert " ERROR   flaky[1] Traceback (most recent call last):" in out
        assert " INFO    flaky[2] attempt 2 starts <b>bold</b>" in out
        assert "job[" not in out
        code, out, err = await _run_async(
            "logs", run_id, "flaky", "--attempt", "2", "--json", "--url", server.url
        )
        assert code == 0, err
        assert {x["attempt"] for x in orjson.loads(out)} == {2}
        code, out, err = await _run_async("logs", "f" * 32, "--url", server.url)
        assert code == 2 and "no run with id" in err and "Traceback" not in err

        page_html = (await http.get(f"{server.url}/runs/{run_id}")).text
        assert "<b>bold</b>" not in page_html
        assert html.escape("attempt 1 starts <b>bold</b>", quote=False) in page_html
        assert 'data-step="flaky" data-attempt="1" open' in page_html  # failed: shown open
        assert "RuntimeError: the first attempt fails" in page_html
        assert "hunter2" not in page_html


async def test_callbacks_past_the_cap_are_told_and_the_cli_escapes_control_characters(
    logs_server: ServerProcess, service: LoopbackService, tmp_path: Path
) -> None:
    async with AsyncClient(logs_server.url) as api, httpx.AsyncClient() as http:
        await api.apply(workflow("logs-cap", tmp_path / "n", service=True))
        run_id = (await api.start("logs-cap", {}))["id"]
        url, _token = await _callback(service)
        hostile = "\u001b]0;pwned\u0007\u001b[2J\u202eevil\u0000nul"
        forged = "ok\n2026-12-01T10:00:00.000Z ERROR   other_step[1] forged"
        lines = [hostile, forged, {"message": "x", "level": "INFO"}]
        first = await http.post(url, json={"heartbeat": True, "logs": lines})
        assert first.status_code == 200 and "logs" not in first.json()
        for i in range(step_logs.MAX_CHUNKS - 1):
            answer = await http.post(url, json={"heartbeat": True, "logs": [f"hb {i}"]})
            assert answer.status_code == 200 and "logs" not in answer.json(), i
        over = await http.post(url, json={"output": {"ok": 1}, "logs": ["lost"]})
        assert over.status_code == 200, over.text
        assert over.json()["status"] == "accepted" and "not kept" in over.json()["logs"]
        assert (await api.wait(run_id, timeout=20))["status"] == "succeeded"
        code, out, err = await _run_async("logs", run_id, "job", "--url", logs_server.url)
    assert code == 0, err
    assert "\x1b" not in out and "\x00" not in out and "\u202e" not in out
    assert "job[1] \\x1b]0;pwned\\x07\\x1b[2J\\u202eevil\\x00nul" in out
    assert "job[1] ok\n  | 2026-12-01T10:00:00.000Z ERROR   other_step[1] forged\n" in out
    assert not any(line.split(" ")[2:3] == ["other_step[1]"] for line in out.splitlines())
    assert out.rstrip("\n").endswith(step_logs.DROPPED) and "lost" not in out
