"""Secrets reach the wire of a real loopback service and nothing else: not the stored step request,
not the attempts, not the run's output, not an error message (on a real SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from legato import Engine, Service
from legato.transports import Message, open_transport
from tests.integration.brokers import broker_url, remove
from tests.integration.testservice import LoopbackService

TABLE_SECRET = "tbl-S3cr3t-4f9a2c"
ENV_SECRET = "env-S3cr3t-77b1e0"
URL_PASSWORD = "pw-in-url-91c3"
TOKEN = "svc-token-5d2e8a"
LITERAL = "literal-auth-0a6f"


async def rows_text(
    db_url: str, tables: tuple[str, ...] = ("runs", "steps", "attempts", "inbox", "services")
) -> str:
    """Every row of the run tables, as text, read straight from the database."""
    if db_url.startswith("sqlite:"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as lite:
            return "\n".join(repr(lite.execute(f"SELECT * FROM {t}").fetchall()) for t in tables)
    base, schema = db_url.split("?schema=")
    pg = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        return "\n".join([repr(await pg.fetch(f"SELECT * FROM {t}")) for t in tables])
    finally:
        await pg.close()


def spec(steps: dict[str, Any], name: str = "wf") -> dict[str, Any]:
    return {"name": name, "steps": steps}


async def test_a_secret_is_sent_but_never_stored(
    engine: Engine, service: LoopbackService, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEGATO_SECRET_ENV_ONE", ENV_SECRET)
    await engine.secrets.put("API_TOKEN", TABLE_SECRET)
    await engine.apply(
        spec(
            {
                "a": {
                    "http": {
                        "service": "svc",
                        "path": "/echo",
                        "headers": {
                            "Authorization": "Bearer {{ secrets.API_TOKEN }}",
                            "X-Env": "{{ secrets['ENV_ONE'] }}",
                        },
                        "query": {"api_key": "{{ secrets.API_TOKEN }}", "q": "plain"},
                        "json": {"pw": "{{ secrets.ENV_ONE }}", "n": 1},
                    }
                }
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    seen = service.seen("/echo")[0]
    assert seen.headers["Authorization"] == f"Bearer {TABLE_SECRET}"
    assert seen.headers["X-Env"] == ENV_SECRET
    assert seen.query == {"api_key": TABLE_SECRET, "q": "plain"}
    assert seen.json == {"pw": ENV_SECRET, "n": 1}
    request = run.steps["a"].request
    assert request["headers"] == {"Authorization": "***", "X-Env": "***"}
    assert request["query"] == {"api_key": "***", "q": "plain"}
    assert request["json"] == {"pw": "***", "n": 1}
    # The service echoed the secrets back: the stored output has them masked.
    assert run.steps["a"].output["body"] == {
        "echo": {"pw": "***", "n": 1},
        "query": {"api_key": "***", "q": "plain"},
    }
    text = await rows_text(db_url)
    assert TABLE_SECRET not in text and ENV_SECRET not in text


async def test_an_unknown_secret_fails_the_step_naming_it(engine: Engine) -> None:
    await engine.apply(
        spec({"a": {"http": {"service": "svc", "path": "/echo", "json": "{{ secrets.NOPE }}"}}})
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    error = run.steps["a"].error
    assert error is not None
    assert error["kind"] == "config" and "'NOPE'" in error["message"], error


async def test_a_marker_in_run_input_resolves_to_nothing(
    engine: Engine, service: LoopbackService
) -> None:
    """Only the names a step's definition writes down are resolved: input cannot ask for others."""
    await engine.secrets.put("API_TOKEN", TABLE_SECRET)
    await engine.apply(
        spec({"a": {"http": {"service": "svc", "path": "/echo", "json": {"x": "{{ input.x }}"}}}})
    )
    run = await engine.run("wf", {"x": "~~secret.API_TOKEN~~"}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert service.seen("/echo")[0].json == {"x": "~~secret.API_TOKEN~~"}


async def test_userinfo_and_token_and_literal_headers(
    engine: Engine, service: LoopbackService, db_url: str
) -> None:
    """A service with user:password@ and a token: the token wins, and nothing shows either."""
    host = service.url.removeprefix("http://")
    await engine.put_service(
        Service(
            name="both",
            base_url=f"http://user:{URL_PASSWORD}@{host}/echo?api_key={URL_PASSWORD}",
            token=TOKEN,
            timeout=5,
        )
    )
    await engine.put_service(
        Service(name="basic", base_url=f"http://user:{URL_PASSWORD}@{host}", timeout=5)
    )
    await engine.put_service(
        Service(
            name="refs",
            base_url=service.url,
            token="{{ secrets.API_TOKEN }}",
            headers={"X-Api-Key": "{{secrets.API_TOKEN}}"},
            timeout=5,
        )
    )
    await engine.secrets.put("API_TOKEN", TABLE_SECRET)
    await engine.apply(
        spec(
            {
                "both": {"http": {"service": "both"}},
                "basic": {"http": {"service": "basic", "path": "/echo/basic"}},
                "refs": {"http": {"service": "refs", "path": "/echo/refs"}},
                "url": {
                    "http": {
                        "url": f"http://u:{URL_PASSWORD}@{host}/echo/url?token={URL_PASSWORD}",
                        "headers": {"Authorization": f"Bearer {LITERAL}"},
                    }
                },
                "down": {
                    "http": {"url": f"http://u:{URL_PASSWORD}@127.0.0.1:1/x?sig={URL_PASSWORD}"},
                    "retry": 0,
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    for name in ("both", "basic", "refs", "url"):
        assert run.steps[name].status == "succeeded", run.steps[name].error
    assert service.seen("/echo")[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert service.seen("/echo")[0].query == {"api_key": URL_PASSWORD}
    basic = service.seen("/echo/basic")[0].headers["Authorization"]
    assert basic == "Basic dXNlcjpwdy1pbi11cmwtOTFjMw=="  # user:pw-in-url-91c3
    refs = service.seen("/echo/refs")[0].headers
    assert refs["Authorization"] == f"Bearer {TABLE_SECRET}" and refs["X-Api-Key"] == TABLE_SECRET
    assert service.seen("/echo/url")[0].headers["Authorization"] == f"Bearer {LITERAL}"
    down = run.steps["down"].error
    assert down is not None
    assert down["kind"] == "network" and "127.0.0.1:1" in down["message"]
    text = await rows_text(db_url)
    for secret in (TABLE_SECRET, LITERAL):
        assert secret not in text
    # The password is in the services table (the directory entry as given), nowhere else.
    run_rows = text[: text.rindex("\n")]
    assert URL_PASSWORD not in run_rows and TOKEN not in run_rows
    assert run.steps["url"].request["url"].startswith("http://u:***@")


async def test_a_whole_url_can_be_a_secret(
    engine: Engine, service: LoopbackService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook-like URL whose path is the credential: sent, stored as `***`."""
    monkeypatch.setenv("LEGATO_SECRET_HOOK", f"{service.url}/echo/hook-{ENV_SECRET}")
    monkeypatch.setenv("LEGATO_SECRET_NOT_A_URL", "ftp://example.test/")
    await engine.apply(
        spec(
            {
                "hook": {"http": {"url": "{{ secrets.HOOK }}", "method": "POST", "json": {}}},
                "bad": {"http": {"url": "{{ secrets.NOT_A_URL }}"}},
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.steps["hook"].status == "succeeded", run.steps["hook"].error
    assert len(service.seen(f"/echo/hook-{ENV_SECRET}")) == 1
    assert run.steps["hook"].request["url"] == "***"
    bad = run.steps["bad"].error
    assert bad is not None and bad["kind"] == "config" and "ftp" not in bad["message"]


async def test_an_emit_step_publishes_its_secrets_and_stores_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = broker_url("nats")
    subject = f"legato-test-secret-{uuid.uuid4().hex[:12]}"
    listener = open_transport(url)
    await listener.connect()
    got: list[Message] = []

    async def keep(message: Message) -> None:
        got.append(message)

    await listener.subscribe(subject, keep)
    monkeypatch.setenv("LEGATO_SECRET_BUS_KEY", ENV_SECRET)
    engine = Engine.open(f"sqlite:///{tmp_path}/bus.db")
    engine.add_transport("bus", url)
    try:
        async with engine:
            await engine.apply(
                spec(
                    {
                        "tell": {
                            "emit": {
                                "transport": "bus",
                                "to": subject,
                                "headers": {"X-Key": "{{ secrets.BUS_KEY }}"},
                                "message": {"k": "{{ secrets.BUS_KEY }}"},
                            }
                        },
                        "unset": {
                            "emit": {"transport": "bus", "to": "{{ secrets.NO_SUCH }}"},
                        },
                    }
                )
            )
            run = await engine.run("wf", {}, timeout=10)
        for _ in range(500):
            if got:
                break
            await asyncio.sleep(0.02)
    finally:
        await listener.close()
        await remove(url, [subject])
    assert run.steps["tell"].status == "succeeded", run.steps["tell"].error
    assert got[0].headers["X-Key"] == ENV_SECRET and orjson.loads(got[0].data) == {"k": ENV_SECRET}
    assert run.steps["tell"].request["headers"] == {"X-Key": "***"}
    assert run.steps["tell"].request["message"] == {"k": "***"}
    unset = run.steps["unset"].error
    assert unset is not None and unset["kind"] == "config" and "'NO_SUCH'" in unset["message"]


async def test_a_poll_url_sends_its_secret_and_stores_none(
    engine: Engine, service: LoopbackService, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEGATO_SECRET_POLL_KEY", ENV_SECRET)
    await engine.apply(
        spec(
            {
                "job": {
                    "timeout": "10s",
                    "http": {
                        "service": "svc",
                        "path": "/echo",
                        "json": {"result": f"{service.url}/flaky/result?fail=1&status=404"},
                        "poll": {
                            "every": "50ms",
                            "url": "{{ accepted.body.echo.result }}&key={{ secrets.POLL_KEY }}",
                        },
                    },
                }
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "succeeded", run.steps["job"]
    polls = service.seen("/flaky/result")
    assert len(polls) == 2 and all(p.query["key"] == ENV_SECRET for p in polls)
    assert ENV_SECRET not in await rows_text(db_url)
