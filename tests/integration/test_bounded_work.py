"""Through a real `legato serve`: definitions past their limits and template bombs get honest
answers (a 4xx naming the field, or a step failing with kind `limit`), and the server keeps
answering /healthz meanwhile."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService


def chain(n: int, name: str = "big") -> dict[str, Any]:
    """n HTTP steps in a line, each with a template Jinja compiles (validation's main cost)."""
    steps: dict[str, Any] = {}
    for i in range(n):
        steps[f"s{i}"] = {"http": {"url": f"http://h/{{{{ input.i + {i} }}}}"}}
        if i:
            steps[f"s{i}"]["depends_on"] = [f"s{i - 1}"]
    return {"name": name, "steps": steps}


async def _healthz_latencies(url: str, until: asyncio.Event) -> list[float]:
    """/healthz, one request after the other, until `until` is set (at least one)."""
    seen: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while True:
            began = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            seen.append(time.perf_counter() - began)
            if until.is_set():
                return seen
            await asyncio.sleep(0.005)


async def _while_healthz(url: str, work: Any) -> tuple[Any, list[float]]:
    done = asyncio.Event()
    probe = asyncio.create_task(_healthz_latencies(url, done))
    await asyncio.sleep(0.2)
    try:
        result = await work
    finally:
        done.set()
    return result, await probe


def _post(server: ServerProcess, body: bytes) -> httpx.Response:
    return httpx.post(
        server.url + "/api/workflows",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )


async def test_a_definition_past_the_step_limit_is_refused_fast_naming_the_limit(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path)
    try:
        body = orjson.dumps(chain(10_000))
        response, latencies = await _while_healthz(
            server.url, asyncio.to_thread(_post, server, body)
        )
        assert response.status_code == 422, response.text
        assert response.json()["problems"] == [
            {
                "path": "steps",
                "message": "10000 steps; the limit is 2000 (legato serve --max-steps)",
            }
        ]
        assert max(latencies) < 2, latencies  # generous: it froze every request for ~20 s
    finally:
        server.stop()


async def test_a_big_definition_within_raised_limits_does_not_stall_the_server(
    tmp_path: Path,
) -> None:
    """Validation (seconds for thousands of steps) runs in a thread: /healthz keeps answering."""
    server = start_server(
        tmp_path, "--max-steps", "5000", "--max-body", "10000000", "--max-definition", "10000000"
    )
    try:
        body = orjson.dumps(chain(4000))
        async with httpx.AsyncClient(base_url=server.url) as http:
            baseline = []
            for _ in range(20):
                began = time.perf_counter()
                await http.get("/healthz")
                baseline.append(time.perf_counter() - began)
        began = time.perf_counter()
        response, latencies = await _while_healthz(
            server.url, asyncio.to_thread(_post, server, body)
        )
        took = time.perf_counter() - began
        assert response.status_code == 201, response.text
        assert len(latencies) > 5
        # Generous: on the event loop the slowest /healthz took as long as the whole post.
        assert max(latencies) < max(took / 3, 10 * statistics.median(baseline)), (
            took,
            max(latencies),
        )
    finally:
        server.stop()


async def test_limits_come_from_the_environment_too(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"LEGATO_MAX_STEPS": "3", "LEGATO_MAX_NESTING": "6"})
    try:
        response = _post(server, orjson.dumps(chain(4)))
        assert response.status_code == 422
        assert "4 steps; the limit is 3" in response.text
        nested: Any = 1
        for _ in range(6):
            nested = {"n": nested}
        deep = {"name": "d", "steps": {"s": {"fail": "x"}}, "output": nested}
        response = _post(server, orjson.dumps(deep))
        assert response.status_code == 422
        assert response.json()["problems"][0]["message"].startswith("nests deeper than 6")
    finally:
        server.stop()


async def test_an_unknown_filter_in_text_is_a_422_naming_the_field(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        definition = {
            "name": "basic",
            "steps": {
                "a": {
                    "http": {
                        "url": "http://127.0.0.1:9/",
                        "headers": {"Authorization": "Basic {{ x | b64encode }}"},
                    }
                }
            },
        }
        response = _post(server, orjson.dumps(definition))
        assert response.status_code == 422, response.text
        [problem] = response.json()["problems"]
        assert problem["path"] == "steps.a.http.headers"
        assert "No filter named 'b64encode'" in problem["message"]
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_validate_prints_the_problem_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nsteps:\n  a:\n    http:\n      url: http://127.0.0.1:9/\n"
        '      headers: {Authorization: "Basic {{ x | b64encode }}"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "legato.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "steps.a.http.headers" in done.stderr
    assert "b64encode" in done.stderr
    assert "Traceback" not in done.stderr


async def _run(server: ServerProcess, definition: dict[str, Any], data: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        response = await http.post("/api/workflows", json=definition)
        assert response.status_code in (200, 201), response.text
        response = await http.post(
            f"/api/workflows/{definition['name']}/runs?wait=30", json={"input": data}
        )
        assert response.status_code == 200, response.text
        return response.json()


async def test_template_bombs_fail_their_step_with_kind_limit_and_send_nothing(
    tmp_path: Path, service: LoopbackService
) -> None:
    server = start_server(tmp_path)
    try:
        power = {
            "name": "power",
            "inputs": [{"name": "n", "type": "integer"}],
            "steps": {
                "a": {
                    "http": {
                        "url": service.url + "/echo",
                        "json": {"r": "{{ (10 ** input.n) % 7 }}"},
                    }
                }
            },
        }
        run, latencies = await _while_healthz(server.url, _run(server, power, {"n": 10_000_000}))
        assert run["status"] == "failed"
        [step] = run["steps"]
        assert step["error"]["kind"] == "limit", step
        assert max(latencies) < 2, latencies  # generous: it froze the server for ~15 s

        repeat = {
            "name": "repeat",
            "steps": {
                "a": {"http": {"url": service.url + "/echo", "json": "{{ 'a' * 100000000 }}"}}
            },
        }
        run = await _run(server, repeat, {})
        [step] = run["steps"]
        assert step["error"]["kind"] == "limit", step
        assert not step.get("request")  # never stored
        assert service.seen("/echo") == []  # never sent
    finally:
        server.stop()


async def test_the_rendered_size_limit_is_configurable(
    tmp_path: Path, service: LoopbackService
) -> None:
    server = start_server(tmp_path, "--max-rendered", "4096")
    try:
        definition = {
            "name": "sized",
            "inputs": [{"name": "n", "type": "integer"}],
            "steps": {"a": {"http": {"url": service.url + "/echo", "json": "{{ 'a' * input.n }}"}}},
        }
        run = await _run(server, definition, {"n": 3000})
        assert run["status"] == "succeeded", run
        run = await _run(server, definition, {"n": 5000})
        [step] = run["steps"]
        assert step["error"]["kind"] == "limit"
        assert "the limit is 4096" in step["error"]["message"]
        assert len(service.seen("/echo")) == 1
    finally:
        server.stop()
