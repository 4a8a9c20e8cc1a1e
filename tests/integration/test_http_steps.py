"""HTTP steps against a real service on loopback, with runs committed to a real SQLite file."""

from __future__ import annotations

import re
from typing import Any

import pytest

from legato import Engine, Service
from legato.errors import DefinitionError, InputError
from tests.integration.testservice import LoopbackService


def spec(steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": extra.pop("name", "wf"), "steps": steps, **extra}


async def test_chain_passes_outputs_and_input(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        spec(
            {
                "first": {
                    "http": {"service": "svc", "path": "/echo", "json": {"n": "{{ input.n }}"}}
                },
                "second": {
                    "depends_on": "first",
                    "http": {
                        "service": "svc",
                        "method": "PUT",
                        "path": "/echo/{{ input.n }}",
                        "query": {"q": "{{ steps.first.output.body.echo.n * 2 }}"},
                        "json": "{{ [steps.first.output.status, input.n] }}",
                    },
                },
            },
            inputs=[{"name": "n", "type": "integer"}],
            output="{{ steps.second.output.body }}",
        )
    )
    run = await engine.run("wf", {"n": 21}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert run.info.output == {"echo": [200, 21], "query": {"q": "42"}}
    second = service.seen("/echo/21")[0]
    assert second.method == "PUT"
    assert second.json == [200, 21]
    assert run.steps["first"].output["status"] == 200
    assert run.steps["first"].output["headers"]["Content-Type"].startswith("application/json")


async def test_every_call_carries_idempotency_key_and_traceparent(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(
        spec(
            {
                "a": {
                    "http": {"service": "svc", "path": "/flaky", "query": {"fail": 2}},
                    "retry": {"retries": 3, "delay": "10ms"},
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    calls = service.seen("/flaky")
    assert len(calls) == 3
    keys = {c.headers["Idempotency-Key"] for c in calls}
    assert keys == {f"{run.info.id}:a"}
    parents = [c.headers["traceparent"] for c in calls]
    for tp in parents:
        assert re.fullmatch(rf"00-{run.info.id}-[0-9a-f]{{16}}-01", tp)
    assert len(set(parents)) == 3, "each attempt is its own span"
    assert run.steps["a"].attempt == 3


async def test_retry_waits_with_backoff_then_gives_up(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(
        spec(
            {
                "a": {
                    "http": {"service": "svc", "path": "/status/503"},
                    "retry": {"retries": 2, "delay": "50ms", "backoff": 2, "jitter": False},
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    assert run.info.error is not None and run.info.error["step"] == "a"
    assert "answered 503" in run.info.error["message"]
    attempts = await engine.store.get_attempts(run.info.id)
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert all(a.error is not None and a.error["kind"] == "5xx" for a in attempts)
    gap1 = attempts[1].started_at - attempts[0].finished_at  # type: ignore[operator]
    gap2 = attempts[2].started_at - attempts[1].finished_at  # type: ignore[operator]
    assert 0.045 <= gap1 < 0.5
    assert 0.095 <= gap2 < 0.6


async def test_client_errors_do_not_retry_by_default(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(
        spec(
            {
                "a": {
                    "http": {"service": "svc", "path": "/status/404"},
                    "retry": {"retries": 5, "delay": 0},
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    assert len(service.seen("/status/404")) == 1
    assert run.steps["a"].error is not None and run.steps["a"].error["kind"] == "4xx"


async def test_429_retries_by_default(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        spec(
            {
                "a": {
                    "http": {
                        "service": "svc",
                        "path": "/flaky",
                        "query": {"fail": 1, "status": 429},
                    },
                    "retry": {"retries": 1, "delay": "10ms"},
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "succeeded"
    assert len(service.seen("/flaky")) == 2


async def test_declared_success_codes_and_branch_on_status(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(
        spec(
            {
                "lookup": {
                    "http": {"service": "svc", "path": "/status/404", "success": ["2xx", 404]}
                },
                "route": {
                    "depends_on": "lookup",
                    "branch": {
                        "cases": [
                            {"when": "{{ steps.lookup.output.status == 404 }}", "then": "create"}
                        ],
                        "otherwise": ["update"],
                    },
                },
                "create": {"http": {"service": "svc", "path": "/echo/create"}},
                "update": {"http": {"service": "svc", "path": "/echo/update"}},
                "done": {
                    "depends_on": ["create", "update"],
                    "trigger": "none_failed",
                    "http": {"service": "svc", "path": "/echo/done"},
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert run.steps["update"].status == "skipped"
    assert run.steps["update"].reason == "branch_not_taken"
    assert run.steps["create"].status == "succeeded"
    assert run.steps["done"].status == "succeeded"
    assert service.seen("/echo/update") == []


async def test_step_timeout_is_a_retryable_failure(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.apply(
        spec(
            {
                "a": {
                    "http": {"service": "svc", "path": "/slow", "query": {"delay": 2}},
                    "timeout": "100ms",
                    "retry": {"retries": 1, "delay": 0},
                },
            }
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    assert run.steps["a"].error is not None and run.steps["a"].error["kind"] == "timeout"
    assert len(service.seen("/slow")) == 2


async def test_run_timeout_fails_the_run(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        spec(
            {"a": {"http": {"service": "svc", "path": "/slow", "query": {"delay": 3}}}},
            timeout="200ms",
        )
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    assert run.info.error is not None and run.info.error["kind"] == "timeout"
    assert run.steps["a"].status == "cancelled"


async def test_network_error_is_reported_and_retried(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.put_service(Service(name="gone", base_url="http://127.0.0.1:9", timeout=2))
    await engine.apply(
        spec({"a": {"http": {"service": "gone"}, "retry": {"retries": 1, "delay": 0}}})
    )
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    error = run.steps["a"].error
    assert error is not None and error["kind"] == "network"
    assert run.steps["a"].attempt == 2


async def test_changing_a_service_address_moves_the_next_call(
    engine: Engine, service: LoopbackService
) -> None:
    other = LoopbackService()
    await other.start()
    try:
        await engine.apply(spec({"a": {"http": {"service": "svc", "path": "/echo"}}}))
        assert (await engine.run("wf", {}, timeout=10)).info.status == "succeeded"
        await engine.put_service(Service(name="svc", base_url=other.url))
        assert (await engine.run("wf", {}, timeout=10)).info.status == "succeeded"
        assert len(service.seen("/echo")) == 1
        assert len(other.seen("/echo")) == 1
    finally:
        await other.stop()


async def test_service_headers_and_token_are_sent(engine: Engine, service: LoopbackService) -> None:
    await engine.put_service(
        Service(
            name="auth",
            base_url=service.url + "/echo",
            headers={"X-Team": "orders"},
            token="s3cret",
        )
    )
    await engine.apply(spec({"a": {"http": {"service": "auth", "headers": {"X-Step": "a"}}}}))
    assert (await engine.run("wf", {}, timeout=10)).info.status == "succeeded"
    seen = service.seen("/echo")[0]
    assert seen.headers["Authorization"] == "Bearer s3cret"
    assert seen.headers["X-Team"] == "orders"
    assert seen.headers["X-Step"] == "a"


async def test_per_service_concurrency_limit_holds_across_runs(
    engine: Engine, service: LoopbackService
) -> None:
    await engine.put_service(Service(name="narrow", base_url=service.url, concurrency=3))
    await engine.apply(
        spec(
            {
                "a": {"http": {"service": "narrow", "path": "/slow", "query": {"delay": 0.03}}},
                "b": {"http": {"service": "narrow", "path": "/slow", "query": {"delay": 0.03}}},
            }
        )
    )
    ids = [await engine.start_run("wf", {}) for _ in range(20)]
    runs = [await engine.wait(i, timeout=20) for i in ids]
    assert all(r.info.status == "succeeded" for r in runs)
    assert len(service.seen("/slow")) == 40
    assert service.max_in_flight == 3


async def test_typed_service_output_is_checked(engine: Engine, service: LoopbackService) -> None:
    await engine.put_service(
        Service.from_dict(
            {
                "name": "typed",
                "address": service.url + "/echo",
                "outputs": [{"name": "echo", "type": "integer"}],
            }
        )
    )
    await engine.apply(spec({"a": {"http": {"service": "typed", "json": {"x": 1}}}}))
    run = await engine.run("wf", {}, timeout=10)
    assert run.info.status == "failed"
    error = run.steps["a"].error
    assert error is not None and error["kind"] == "output"
    assert "body.echo: must be an integer" in error["message"]


async def test_text_reply_is_kept_as_text(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(spec({"a": {"http": {"url": service.url + "/text"}}}))
    run = await engine.run("wf", {}, timeout=10)
    assert run.steps["a"].output["body"] == "plain words"


async def test_bad_input_is_refused_and_nothing_is_stored(engine: Engine, db_url: str) -> None:
    await engine.apply(
        spec(
            {"a": {"http": {"service": "svc", "path": "/echo"}}},
            inputs=[{"name": "amount", "type": "number"}],
        )
    )
    with pytest.raises(InputError) as info:
        await engine.start_run("wf", {"amount": "12"})
    assert info.value.to_dict()["problems"] == [
        {"path": "input.amount", "message": "must be a number, got string"}
    ]
    with pytest.raises(InputError, match=r"input\.extra: is not a declared field"):
        await engine.start_run("wf", {"amount": 1, "extra": True})
    assert await engine.store.list_runs() == []  # nothing stored, on any backend


async def test_unknown_service_is_refused_at_registration(engine: Engine) -> None:
    with pytest.raises(DefinitionError, match=r"steps.a.http.service: unknown service 'nope'"):
        await engine.apply(spec({"a": {"http": {"service": "nope"}}}))
    assert await engine.store.get_workflow("wf") is None


async def test_same_definition_same_version_changed_next_version(engine: Engine) -> None:
    first = await engine.apply(spec({"a": {"http": {"service": "svc", "path": "/echo"}}}))
    again = await engine.apply(spec({"a": {"http": {"service": "svc", "path": "/echo"}}}))
    changed = await engine.apply(spec({"a": {"http": {"service": "svc", "path": "/echo/2"}}}))
    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created) == (1, False)
    assert (changed.version, changed.created) == (2, True)


async def test_runs_stay_pinned_to_their_version(engine: Engine, service: LoopbackService) -> None:
    await engine.apply(
        spec({"a": {"http": {"service": "svc", "path": "/slow", "query": {"delay": 0.2}}}})
    )
    run_id = await engine.start_run("wf", {})
    await engine.apply(spec({"a": {"http": {"service": "svc", "path": "/echo/v2"}}}))
    run = await engine.wait(run_id, timeout=10)
    assert run.info.version == 1
    assert run.steps["a"].request["path"] == "/slow"
    newer = await engine.run("wf", {}, timeout=10)
    assert newer.info.version == 2


async def test_refused_services_in_order_document_registers_nothing(engine: Engine) -> None:
    document = {
        "name": "half",
        "services": [{"name": "fresh", "address": "http://127.0.0.1:9/fresh"}, "missing"],
    }
    with pytest.raises(DefinitionError, match="unknown service 'missing'"):
        await engine.apply(document)
    assert engine.service("fresh") is None
    assert [s.name for s in await engine.store.list_services()] == ["svc"]
    assert await engine.store.get_workflow("half") is None
