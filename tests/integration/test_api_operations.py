"""Health, metrics, the OpenAPI document and its docs page, and the bearer token, on real servers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legato.client import ApiError, AsyncClient, Client
from tests.integration.serverprocess import ServerProcess, free_port, start_server
from tests.integration.testservice import LoopbackService


def test_healthz_answers_ok(server: ServerProcess) -> None:
    answer = httpx.get(server.url + "/healthz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


async def test_metrics_count_runs_and_steps_by_status_with_latency(
    api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(
        {"name": "metered", "steps": {"one": {"http": {"service": "svc", "path": "/echo"}}}}
    )
    for _ in range(3):
        await api.start("metered", {}, wait=10)
    async with httpx.AsyncClient() as http:
        answer = await http.get(server.url + "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'legato_runs_started_total{workflow="metered"} 3.0' in text
    assert 'legato_runs_ended_total{status="succeeded",workflow="metered"} 3.0' in text
    assert 'legato_steps_ended_total{status="succeeded",workflow="metered"} 3.0' in text
    assert (
        'legato_step_duration_seconds_count{status="succeeded",step="one",workflow="metered"} 3.0'
        in text
    )
    for gauge in ("legato_runs_active", "legato_steps_in_flight", "legato_commit_queue_depth"):
        assert f"\n{gauge} " in text


def test_the_openapi_document_describes_every_route(server: ServerProcess) -> None:
    doc = httpx.get(server.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.0")
    paths = set(doc["paths"])
    assert {
        "/api/services",
        "/api/services/{name}",
        "/api/secrets",
        "/api/secrets/{name}",
        "/api/workflows",
        "/api/workflows/{name}",
        "/api/workflows/{name}/versions/{version}",
        "/api/workflows/{name}/graph",
        "/api/workflows/{name}/runs",
        "/e/{workflow}",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs:cancel",
        "/api/runs:retry",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/retry",
        "/api/runs/{run_id}/steps/{step}/complete",
        "/api/audit",
        "/healthz",
        "/metrics",
    } <= paths


def test_the_docs_page_and_its_assets_are_served_from_the_package(server: ServerProcess) -> None:
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200
    assert "/docs/static/swagger-ui-bundle.js" in page.text
    assert "https://" not in page.text  # nothing from a CDN
    script = httpx.get(server.url + "/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_unknown_routes_and_methods_answer_json(server: ServerProcess) -> None:
    missing = httpx.get(server.url + "/api/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = httpx.delete(server.url + "/api/runs")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("guarded"), env={"LEGATO_API_TOKEN": "t0ken"}, name="guarded"
    )
    yield proc
    proc.stop()


def test_with_a_token_every_route_but_healthz_needs_it(guarded: ServerProcess) -> None:
    assert httpx.get(guarded.url + "/healthz").status_code == 200
    for path in ("/api/services", "/api/runs", "/api/workflows", "/metrics", "/openapi.json"):
        bare = httpx.get(guarded.url + path)
        assert bare.status_code == 401, path
        assert bare.json()["problems"][0]["path"] == "Authorization"
        assert bare.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(guarded.url + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.get(guarded.url + path, headers={"Authorization": "Bearer t0ken"})
        assert right.status_code == 200, path
    posted = httpx.post(guarded.url + "/api/services", json={"name": "x", "base_url": "http://h"})
    assert posted.status_code == 401
    with Client(guarded.url, token="t0ken") as client:
        assert client.services() == []  # the refused POST stored nothing
    with Client(guarded.url) as client, pytest.raises(ApiError) as caught:
        client.services()
    assert caught.value.status == 401


def test_without_a_token_the_server_says_it_is_open_to_loopback_only(server: ServerProcess) -> None:
    assert "no LEGATO_API_TOKEN: the API is open to this machine only" in server.output()


def serve_and_fail(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `legato serve` with arguments it must refuse, and return how it ended."""
    return subprocess.run(
        [sys.executable, "-m", "legato.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_without_a_token_a_public_address_is_refused(tmp_path: Path) -> None:
    done = serve_and_fail(
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "refusing to serve 0.0.0.0 without a token" in done.stderr


async def test_the_sync_client_has_the_same_verbs(
    server: ServerProcess, service: LoopbackService
) -> None:
    # The blocking client runs in a thread so the loopback service (on this loop) can answer.
    import asyncio

    def use() -> dict[str, object]:
        with Client(server.url) as client:
            client.add_service({"name": "svc", "base_url": service.url}, replace=True)
            client.apply(
                "name: sync-client\nsteps:\n  one: {http: {service: svc, path: /echo, json: {a: 1}}}\n"
            )
            run = client.start("sync-client", {}, wait=10)
            assert run["status"] == "succeeded"
            page = client.runs(workflow="sync-client")
            assert [r["id"] for r in page["runs"]] == [run["id"]]
            assert [r["id"] for r in client.iter_runs(workflow="sync-client")] == [run["id"]]
            assert client.graph("sync-client")["nodes"][0]["id"] == "one"
            assert client.health()["status"] == "ok"
            return dict(client.run(run["id"]))

    run = await asyncio.to_thread(use)
    assert run["steps"][0]["output"]["body"]["echo"] == {"a": 1}  # type: ignore[index]


def test_an_unreachable_server_is_a_clear_error() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}") as client,
        pytest.raises(Exception, match="cannot reach Legato"),
    ):
        client.services()


def test_a_405_names_the_methods_allowed(server: ServerProcess) -> None:
    wrong = httpx.delete(server.url + "/api/workflows")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_the_bearer_scheme_is_case_insensitive(guarded: ServerProcess) -> None:
    for header in ("bearer t0ken", "BEARER t0ken", "Bearer  t0ken"):
        answer = httpx.get(guarded.url + "/api/runs", headers={"Authorization": header})
        assert answer.status_code == 200, header
    for header in ("Basic t0ken", "t0ken", "Bearer t0ken2", "Bearer"):
        answer = httpx.get(guarded.url + "/api/runs", headers={"Authorization": header})
        assert answer.status_code == 401, header


def test_a_client_without_a_timeout_can_still_wait(server: ServerProcess) -> None:
    with Client(server.url, timeout=None) as client:
        client.apply({"name": "no-timeout", "steps": {"f": {"fail": "stop"}}})
        assert client.start("no-timeout", {}, wait=5)["status"] == "failed"


def test_a_port_in_use_is_a_clear_error(server: ServerProcess, tmp_path: Path) -> None:
    port = server.url.rsplit(":", 1)[1]
    done = serve_and_fail("--port", port, "--db", f"sqlite:///{tmp_path / 'y.db'}")
    assert done.returncode == 2
    assert f"the server could not start on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_database_that_cannot_open_is_a_clear_error(tmp_path: Path) -> None:
    done = serve_and_fail("--port", str(free_port()), "--db", "sqlite:////proc/no.db")
    assert done.returncode == 2
    assert "cannot open the database sqlite:////proc/no.db" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--grace", "nan"),
        ("--grace", "-1"),
        ("--port", "99999"),
        ("--max-body", "-1"),
        ("--log-level", "bogus"),
        ("--transport", "nonsense"),
        ("--subscribe", "nocolon"),
    ],
)
def test_bad_serve_options_are_usage_errors(tmp_path: Path, option: str, value: str) -> None:
    done = serve_and_fail(option, value, "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert done.returncode == 2
    assert f"Invalid value for '{option}'" in done.stderr
    assert "Traceback" not in done.stderr
