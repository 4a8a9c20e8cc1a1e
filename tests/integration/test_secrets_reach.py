"""Where a secret may go (review of issue 12): to the wire only where a definition wrote
`{{ secrets.NAME }}`, never through a marker in run input or a service's reply; and nothing a service
echoes back (poll URLs, encoded forms, a service's own credentials) is stored. Scrubbing does not
rewrite a reply's keys or short common words. Real loopback service, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from legato import Engine, Service
from tests.integration.test_secrets import rows_text
from tests.integration.testservice import LoopbackService

TOK = "tok-S3cr3t-5be0a1"


def spec(name: str, steps: dict[str, Any], inputs: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "inputs": [{"name": i, "type": "string"} for i in inputs], "steps": steps}


async def test_a_marker_in_run_input_is_not_replaced_beside_a_real_reference(
    engine: Engine, service: LoopbackService, db_url: str
) -> None:
    await engine.secrets.put("TOK", TOK)
    await engine.apply(
        spec(
            "smuggle",
            {
                "post": {
                    "http": {
                        "url": f"{service.url}/echo",
                        "method": "POST",
                        "headers": {"Authorization": "Bearer {{ secrets.TOK }}"},
                        "json": {"c": "{{ input.c }}"},
                    }
                }
            },
            ("c",),
        )
    )
    forged = "hi ~~secret.TOK~~ ~~secret.TOK.0123456789abcdef~~"
    run = await engine.run("smuggle", {"c": forged}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    seen = service.seen("/echo")[0]
    assert seen.headers["Authorization"] == f"Bearer {TOK}"  # where the definition wrote it
    assert seen.json == {"c": forged}  # and nowhere else
    assert TOK not in await rows_text(db_url)


async def test_a_poll_url_from_a_reply_never_gets_another_steps_secret(
    engine: Engine, service: LoopbackService, db_url: str
) -> None:
    await engine.secrets.put("TOK", TOK)
    mirror = f"{service.url}/mirror"
    await engine.apply(
        spec(
            "pollx",
            {
                "a": {
                    "timeout": "10s",
                    "http": {
                        "method": "POST",
                        "url": f"{mirror}/a",
                        "poll": {
                            "every": "50ms",
                            "url": f"{mirror}/a/result?k={{{{ secrets.TOK }}}}",
                        },
                    },
                },
                "b": {
                    "timeout": "10s",
                    "http": {
                        "method": "POST",
                        "url": f"{mirror}/b",
                        "query": {"x": "{{ input.x }}"},
                        "poll": {"every": "50ms", "url": "{{ accepted.body.url }}"},
                    },
                },
            },
            ("x",),
        )
    )
    run = await engine.run("pollx", {"x": "~~secret.TOK~~"}, timeout=10)
    assert run.info.status == "succeeded", run.steps
    assert service.seen("/mirror/a/result")[0].query == {"k": TOK}
    polled_b = [r for r in service.requests if r.path == "/mirror/b" and r.method == "GET"]
    assert polled_b and all(TOK not in repr(r) for r in polled_b)
    assert TOK not in await rows_text(db_url)


async def test_a_secret_in_a_poll_url_is_not_stored_from_errors_or_echoes(
    engine: Engine, service: LoopbackService, db_url: str
) -> None:
    await engine.secrets.put("TOK", TOK)
    mirror = f"{service.url}/mirror"
    for name, status in (("poll-ok", 200), ("poll-403", 403)):
        await engine.apply(
            spec(
                name,
                {
                    "job": {
                        "timeout": "10s",
                        "http": {
                            "method": "POST",
                            "url": f"{mirror}/accept",
                            "poll": {
                                "every": "50ms",
                                # A literal password, and a secret in the path
                                "url": mirror.replace("://", "://u:pw-lit-0b7c2e@")
                                + f"/r/{{{{ secrets.TOK }}}}?status={status}",
                            },
                        },
                    }
                },
            )
        )
        run = await engine.run(name, {}, timeout=10)
        assert run.info.status == ("succeeded" if status == 200 else "failed"), run.steps
    assert len(service.seen(f"/mirror/r/{TOK}")) == 2
    text = await rows_text(db_url)
    assert TOK not in text and "pw-lit-0b7c2e" not in text


async def test_a_services_own_credentials_echoed_back_are_not_stored(
    engine: Engine, service: LoopbackService, db_url: str
) -> None:
    host = service.url.removeprefix("http://")
    await engine.put_service(
        Service(
            name="creds",
            base_url=f"http://user:url-pw-77aa01@{host}/mirror/base?api_key=KEYVAL12345&x=1",
            headers={"X-Custom": "hdr-secret-999", "Accept": "application/json"},
            token="svc-token-12345",
        )
    )
    await engine.apply(
        spec("svcecho", {"a": {"http": {"service": "creds", "path": "/p", "json": {"x": 1}}}})
    )
    run = await engine.run("svcecho", {}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    (seen,) = service.seen("/mirror/base/p")  # the step's path goes before the base URL's query
    assert seen.query == {"api_key": "KEYVAL12345", "x": "1"}
    assert seen.headers["X-Custom"] == "hdr-secret-999"
    text = await rows_text(db_url, ("runs", "steps", "attempts", "inbox"))  # not the directory
    for secret in ("KEYVAL12345", "hdr-secret-999", "svc-token-12345", "url-pw-77aa01"):
        assert secret not in text, secret


async def test_percent_and_plus_encoded_secrets_are_not_stored(
    engine: Engine, service: LoopbackService, db_url: str
) -> None:
    secret = "p@ss w/rd&x=1yz"
    await engine.secrets.put("SP", secret)
    await engine.apply(
        spec(
            "enc",
            {
                "s": {
                    "http": {
                        "url": f"{service.url}/mirror/{{{{ secrets.SP }}}}",
                        "query": {"q": "{{ secrets.SP }}"},
                    }
                }
            },
        )
    )
    run = await engine.run("enc", {}, timeout=10)
    assert run.info.status == "succeeded", run.info.error
    assert [r.path for r in service.requests if r.query.get("q") == secret] == [f"/mirror/{secret}"]
    text = await rows_text(db_url)
    for form in ("rd&x=1yz", "rd%26x%3D1yz", "w/rd", "w%2Frd"):
        assert form not in text, form


async def test_scrubbing_never_rewrites_keys_or_short_words(
    engine: Engine, service: LoopbackService
) -> None:
    host = service.url.removeprefix("http://")
    await engine.apply(
        spec(
            "scrubkey",
            {
                "a": {
                    "http": {
                        "url": f"http://api:body@{host}/mirror/x?role=admin",
                        # Named like keys and tokens, but data: not scrubbed out of the reply.
                        "query": {"sort_key": "created_at_desc", "page_token": "cursor-0042"},
                    }
                },
                "b": {
                    "depends_on": "a",
                    "http": {
                        "method": "POST",
                        "url": f"{service.url}/echo",
                        "headers": {"Authorization": "Bearer admin"},
                        "json": {"m": "{{ steps.a.output.body.method }}"},
                    },
                },
            },
        )
    )
    run = await engine.run("scrubkey", {}, timeout=10)
    assert run.info.status == "succeeded", [s.error for s in run.steps.values()]
    body = run.steps["a"].output["body"]
    assert set(body) == {"method", "url", "raw_path", "headers", "body"}
    assert body["url"].endswith(
        "/mirror/x?role=admin&sort_key=created_at_desc&page_token=cursor-0042"
    ), body["url"]
    assert run.steps["b"].output["body"]["echo"] == {"m": "GET"}
