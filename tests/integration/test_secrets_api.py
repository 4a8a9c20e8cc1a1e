"""Secrets and masking through a real `legato serve`: set by the CLI and the API, sent to a real loopback
service, and absent from every answer of the API, every UI page, the database's run rows and the log."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from legato.client import AsyncClient
from tests.integration.conftest import fresh_schema
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService

ENV_SECRET = "env-v4lue-3e1b9f"
CLI_SECRET = "cli-v4lue-8d02aa"
URL_PASSWORD = "url-pw-51ff0c"
TOKEN = "svc-tok-09ab7e"
HEADER_SECRET = "hdr-v4lue-c4e2d1"
LITERAL = "lit-bearer-6b3a90"
ALL = (ENV_SECRET, CLI_SECRET, URL_PASSWORD, TOKEN, HEADER_SECRET, LITERAL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("secrets"), env={"LEGATO_SECRET_FROM_ENV": ENV_SECRET}
    )
    yield proc
    proc.stop()


def cli(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legato.cli", *args, "--url", server.url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def run_rows(server: ServerProcess) -> str:
    with sqlite3.connect(server.db.removeprefix("sqlite:///")) as conn:
        return "\n".join(
            repr(conn.execute(f"SELECT * FROM {t}").fetchall())
            for t in ("runs", "steps", "attempts")
        )


async def test_secrets_reach_the_wire_and_nothing_shows_them(
    server: ServerProcess, service: LoopbackService
) -> None:
    done = cli(server, "secret", "set", "API_KEY", stdin=CLI_SECRET + "\n")
    assert done.returncode == 0, done.stderr
    host = service.url.removeprefix("http://")
    async with AsyncClient(server.url) as api:
        await api.add_service(
            {
                "name": "locked",
                "base_url": f"http://user:{URL_PASSWORD}@{host}/echo?api_key={URL_PASSWORD}",
                "token": TOKEN,
                "headers": {"X-Api-Key": HEADER_SECRET, "Accept": "application/json"},
            },
            replace=True,
        )
        await api.add_service({"name": "svc", "base_url": service.url}, replace=True)
        await api.apply(
            {
                "name": "secretive",
                "steps": {
                    "refs": {
                        "http": {
                            "service": "svc",
                            "path": "/echo/refs",
                            "headers": {"Authorization": "Bearer {{ secrets.API_KEY }}"},
                            "json": {"key": "{{ secrets.FROM_ENV }}"},
                        }
                    },
                    "locked": {"http": {"service": "locked"}},
                    "literal": {
                        "http": {
                            "url": f"{service.url}/echo/literal?token={LITERAL}",
                            "headers": {"Authorization": f"Bearer {LITERAL}"},
                        }
                    },
                },
            }
        )
        run = await api.start("secretive", {}, wait=10)
        assert run["status"] == "succeeded", run
        refs = service.seen("/echo/refs")[0]
        assert refs.headers["Authorization"] == f"Bearer {CLI_SECRET}"
        assert refs.json == {"key": ENV_SECRET}
        locked = service.seen("/echo")[0]
        assert locked.headers["Authorization"] == f"Bearer {TOKEN}"
        assert locked.headers["X-Api-Key"] == HEADER_SECRET
        assert service.seen("/echo/literal")[0].headers["Authorization"] == f"Bearer {LITERAL}"

        detail = await api.run(run["id"])
        step = next(s for s in detail["steps"] if s["name"] == "refs")
        assert step["request"]["headers"] == {"Authorization": "***"}
        assert step["request"]["json"] == {"key": "***"}

        listed = await api.secrets()
        assert {(s["name"], s["source"]) for s in listed} >= {
            ("API_KEY", "store"),
            ("FROM_ENV", "env"),
        }
        async with httpx.AsyncClient(base_url=server.url) as http:
            shown = [
                (await http.get(path)).text
                for path in (
                    f"/api/runs/{run['id']}",
                    "/api/runs",
                    "/api/services",
                    "/api/services/locked",
                    "/api/workflows/secretive",
                    "/api/workflows/secretive/graph",
                    "/api/secrets",
                    f"/runs/{run['id']}",
                    "/runs",
                    "/services",
                    "/workflows/secretive",
                )
            ]
    listing = cli(server, "secret", "list")
    assert listing.returncode == 0 and "API_KEY" in listing.stdout
    for page in [*shown, run_rows(server), server.output(), listing.stdout]:
        for secret in ALL:
            assert secret not in page
    assert "user:***@" in shown[2] and "api_key=***" in shown[2]


async def test_secret_routes_refuse_bad_input_and_an_unknown_secret_fails_its_step(
    server: ServerProcess, service: LoopbackService
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        bad = await http.put("/api/secrets/9bad-name", json={"value": "x"})
        assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "name"
        empty = await http.put("/api/secrets/OK", json={"value": ""})
        assert empty.status_code == 422 and empty.json()["problems"][0]["path"] == "value"
        first = await http.put(
            "/api/secrets/PLAIN", content=b"text-value", headers={"content-type": "text/plain"}
        )
        again = await http.put("/api/secrets/PLAIN", json={"value": "other"})
        assert (first.status_code, again.status_code) == (201, 200)
        assert "value" not in again.json()
        assert (await http.delete("/api/secrets/PLAIN")).status_code == 204
        assert (await http.delete("/api/secrets/PLAIN")).status_code == 404
        extra = await http.put("/api/secrets/X1", json={"value": "v-123456", "valeu": "typo"})
        assert extra.status_code == 422 and extra.json()["problems"][0]["path"] == "valeu"
        latin = await http.put(
            "/api/secrets/X1", content=b"caf\xe9", headers={"content-type": "text/plain"}
        )
        assert latin.status_code == 422 and latin.json()["problems"][0]["path"] == "value"
        listed = (await http.get("/api/secrets")).json()["secrets"]
        assert "X1" not in [e["name"] for e in listed]  # neither was stored
        for body, field in (
            ({"token": "{{ secrets.1X }}"}, "token"),
            ({"token": "{{ secrets.X | upper }}"}, "token"),
            ({"headers": {"X-A\nB": "v"}}, "headers.'X-A\\nB'"),
            ({"base_url": "http://h:99999/"}, "base_url"),
            ({"base_url": "http://u:p@/"}, "base_url"),
        ):
            refused = await http.post(
                "/api/services", json={"name": "bad", "base_url": "http://h/", **body}
            )
            assert refused.status_code == 422, (body, refused.text)
            assert refused.json()["problems"][0]["path"] == field, refused.json()
    async with AsyncClient(server.url) as api:
        await api.add_service({"name": "svc", "base_url": service.url}, replace=True)
        await api.apply(
            {
                "name": "unknown-secret",
                "steps": {"a": {"http": {"service": "svc", "json": "{{ secrets.MISSING }}"}}},
            }
        )
        run = await api.start("unknown-secret", {}, wait=10)
        assert run["status"] == "failed"
        error = (await api.run(run["id"]))["steps"][0]["error"]
        assert error["kind"] == "config" and "'MISSING'" in error["message"]
    await asyncio.sleep(0)
    assert "Traceback" not in server.output()


async def test_the_worker_banner_hides_the_database_password(tmp_path: Path) -> None:
    async with fresh_schema() as url:
        base, schema = url.split("?schema=")
        # PostgreSQL here trusts local connections: the password is ignored, but must not show.
        p = urlsplit(base)
        where = f"{p.username or 'postgres'}:SuperSecretPw@{p.hostname}:{p.port or 5432}"
        db = f"{p.scheme}://{where}{p.path}?schema={schema}"
        worker = start_server(tmp_path, "--migrate", db=db, name="worker", command="worker")
        try:
            for _ in range(100):  # the banner may follow the first /healthz answer
                banner = worker.output()
                if "Legato worker" in banner:
                    break
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
    assert "Legato worker" in banner and "SuperSecretPw" not in banner, banner
    assert ":***@" in banner


def test_cli_secret_delete_and_empty_value(server: ServerProcess, tmp_path: Path) -> None:
    assert cli(server, "secret", "set", "GONE", "--value", "v-1234").returncode == 0
    assert cli(server, "secret", "delete", "GONE").returncode == 0
    missing = cli(server, "secret", "delete", "GONE")
    assert missing.returncode == 2 and "GONE" in missing.stderr
    assert cli(server, "secret", "set", "EMPTY", stdin="").returncode != 0
