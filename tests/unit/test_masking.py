"""The masking policy and secret references (pure): what is shown, stored and sent."""

from __future__ import annotations

import time

import pytest

from legato.engine.state import Resume
from legato.errors import LegatoError
from legato.masking import (
    CREDENTIAL_NAME,
    mask_error,
    mask_headers,
    mask_output,
    mask_request,
    mask_service,
    mask_text,
    mask_url,
)
from legato.model.service import Service
from legato.secret_refs import marker, names_in, scrub, substitute, wanted
from legato.store.migrations import to_apply
from tests.unit.decider_support import Run, build, executes


def test_urls_lose_their_password_and_key_like_query_values() -> None:
    assert mask_url("http://user:pw@h:8/p?api_key=k&x=1&Signature=s") == (
        "http://user:***@h:8/p?api_key=***&x=1&Signature=***"
    )
    assert mask_url("https://tok@h/a") == "https://***@h/a"
    assert mask_url("https://h/a?q=1") == "https://h/a?q=1"
    for name in ("token", "access_token", "password", "secret", "sig", "apikey", "key"):
        assert mask_url(f"http://h/?{name}=v") == f"http://h/?{name}=***"
    assert mask_url("http://[::1/") == "***"  # not splittable: nothing of it is shown


def test_only_allowed_headers_are_shown() -> None:
    shown = mask_headers(
        {
            "Content-Type": "application/json",
            "Idempotency-Key": "r:s",
            "Authorization": "Bearer t",
            "X-Api-Key": "k",
            "X-Tenant": "acme",
            "Cookie": "a=b",
        }
    )
    assert shown == {
        "Content-Type": "application/json",
        "Idempotency-Key": "r:s",
        "Authorization": "***",
        "X-Api-Key": "***",
        "X-Tenant": "***",
        "Cookie": "***",
    }


def test_a_request_is_masked_everywhere_a_credential_can_be() -> None:
    ref = marker("T")
    request = {
        "method": "POST",
        "url": f"http://u:p@h/{ref}?token=x",
        "query": {"api_key": "k", "page": "2", "q": ref},
        "headers": {"Accept": "*/*", "X-Secret": "s"},
        "json": {"deep": [f"Bearer {ref}"]},
        "poll": {"url": "http://h/r?X-Amz-Signature=abc"},
    }
    assert mask_request(request) == {
        "method": "POST",
        "url": "http://u:***@h/***?token=***",
        "query": {"api_key": "***", "page": "2", "q": "***"},
        "headers": {"Accept": "*/*", "X-Secret": "***"},
        "json": {"deep": ["Bearer ***"]},
        "poll": {"url": "http://h/r?X-Amz-Signature=***"},
    }
    assert mask_request(mask_request(request)) == mask_request(request)


def test_errors_outputs_and_services_are_masked() -> None:
    error = {"kind": "network", "message": "GET http://u:p@h/x?key=1 failed: refused"}
    assert mask_error(error)["message"] == "GET http://u:***@h/x?key=*** failed: refused"
    assert mask_text("no url here") == "no url here"
    out = {"status": 200, "headers": {"Set-Cookie": "s=1", "ETag": "e"}, "body": {"a": 1}}
    assert mask_output(out)["headers"] == {"Set-Cookie": "***", "ETag": "e"}
    assert mask_output({"a": 1}) == {"a": 1}
    svc = Service("s", "http://u:p@h/?api_key=k", {"X-Key": "k", "Accept": "a"}, token="t")
    shown = mask_service(svc)
    assert (shown.base_url, shown.headers, shown.token) == (
        "http://u:***@h/?api_key=***",
        {"X-Key": "***", "Accept": "a"},
        "***",
    )


def test_secret_references_resolve_only_for_names_the_definition_writes() -> None:
    wf = build(
        {
            "a": {
                "http": {
                    "url": "http://h/{{ secrets.PATH }}",
                    "headers": {"A": "Bearer {{ secrets['TOK'] }}"},
                    "json": {"x": "{{ input.x }}"},
                }
            }
        }
    )
    action = wf.steps["a"].action
    names = names_in([action.url, action.headers, action.json])  # type: ignore[union-attr]
    assert names == {"PATH", "TOK"}
    t = "0123456789abcdef"
    request = {
        "url": f"http://h/{marker('PATH', t)}",
        "json": {"x": marker("OTHER", t), "y": marker("TOK"), "z": marker("TOK", "f" * 16)},
    }
    assert wanted(request, names, t) == {"PATH"}
    assert wanted(request, names, None) == set()
    sent = substitute(request, {"PATH": "p", "TOK": "t"}, t)
    # Only this rendering's own markers are replaced: untagged or other tags stay inert text.
    assert sent == {
        "url": "http://h/p",
        "json": {"x": marker("OTHER", t), "y": marker("TOK"), "z": marker("TOK", "f" * 16)},
    }
    assert scrub({"echo": ["got secret-1-long and abc"]}, ["secret-1-long", "abc"]) == {
        "echo": ["got *** and abc"]
    }


def test_scrub_keeps_keys_and_short_values_and_catches_encoded_forms() -> None:
    reply = {"body": "body", "admin": ["admin", "role admin"], "n": 1}
    assert scrub(reply, ["body", "admin"]) == reply  # under SCRUB_MIN: data is not rewritten
    secret = "p@ss w/rd&x=1yz"
    echoed = {
        "url": "http://h/q?q=p@ss+w/rd%26x%3D1yz",
        "path": "/p%40ss%20w/rd%26x%3D1yz",
        "json": '{"pw": "p@ss w/rd&x=1yz"}',
        "p@ss w/rd&x=1yz": 1,
    }
    assert scrub(echoed, [secret]) == {
        "url": "http://h/q?q=***",
        "path": "/***",
        "json": '{"pw": "***"}',
        "p@ss w/rd&x=1yz": 1,  # keys are never rewritten
    }


def test_the_decider_stores_a_masked_request_and_resume_sends_the_real_one() -> None:
    run = Run(
        build(
            {
                "a": {
                    "http": {
                        "url": "http://h/",
                        "headers": {"Authorization": "Bearer {{ secrets.TOK }}", "Accept": "x"},
                        "query": {"token": "literal"},
                    }
                }
            }
        ),
        now=0.0,
    )
    d = run.start()
    (e,) = executes(d)
    tag = e.request["secret_tag"]
    sent = {
        "method": "GET",
        "url": "http://h/",
        "headers": {"Authorization": f"Bearer {marker('TOK', tag)}", "Accept": "x"},
        "query": {"token": "literal"},
        "secret_tag": tag,
    }
    assert e.request == sent
    stored = run.step("a").request
    assert stored == {
        "method": "GET",
        "url": "http://h/",
        "headers": {"Authorization": "***", "Accept": "x"},
        "query": {"token": "***"},
    }
    (again,) = executes(run.send(Resume()))
    retag = again.request["secret_tag"]
    assert retag != tag  # a fresh tag for each rendering
    assert again.request == {
        **sent,
        "headers": {"Authorization": f"Bearer {marker('TOK', retag)}", "Accept": "x"},
        "secret_tag": retag,
    }


def test_a_template_error_quoting_a_url_stores_it_masked() -> None:
    run = Run(build({"a": {"http": {"url": "{{ input.u }}"}}}), {"u": "ftp://u:pw@h/?token=t"})
    run.start()
    error = run.step("a").error
    assert error is not None and error["kind"] == "template"
    assert "pw" not in error["message"] and "u:***@h" in error["message"], error


def test_a_templated_url_keeps_its_text_but_not_its_credentials() -> None:
    url = "http://h/{{ input.id }}?q={{ input.q }}&access_token={{ input.t }}&flag"
    assert mask_url(url) == "http://h/{{ input.id }}?q={{ input.q }}&access_token=***&flag"


def test_a_database_url_in_a_migration_refusal_hides_its_password() -> None:
    url = "postgresql://legato:db-pw-123@db.internal/legato"
    for current in (1, 9):
        with pytest.raises(LegatoError) as refused:
            to_apply([(1, ""), (2, "")], current, url, allowed=False)
        assert "db-pw-123" not in str(refused.value)
        assert "legato:***@db.internal" in str(refused.value)


def test_only_names_that_are_credentials_as_a_whole_are_scrubbed() -> None:
    for name in ("api_key", "key", "X-Api-Key", "access_token", "X-Auth-Token", "Authorization"):
        assert CREDENTIAL_NAME.fullmatch(name), name
    for name in ("sort_key", "page_token", "next_page_token", "X-Tenant", "keyword", "monkey"):
        assert not CREDENTIAL_NAME.fullmatch(name), name


def test_a_masked_url_keeps_its_text_exactly_and_masks_path_params_and_fragments() -> None:
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert mask_url("postgresql://pg:SuperSecretPw@db:5432/t?schema=s") == (
        "postgresql://pg:***@db:5432/t?schema=s"
    )
    assert mask_url("http://h/a;jsessionid=ABC/b?x=1#access_token=T&y=2") == (
        "http://h/a;jsessionid=***/b?x=1#access_token=***&y=2"
    )
    assert mask_url("http://h/a;v=1#top") == "http://h/a;v=1#top"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"base_url": "http://h/", "token": "{{ secrets.1X }}"}, "token"),
        ({"base_url": "http://h/", "token": "{{ secrets.X | upper }}"}, "token"),
        ({"base_url": "http://h/", "token": "two words"}, "token"),
        ({"base_url": "http://h/", "headers": {"X-A\nB": "v"}}, "headers.'X-A\\nB'"),
        ({"base_url": "http://h/", "headers": {"X-A": "v\r\nX-B: w"}}, "headers.X-A"),
        ({"base_url": "http://h/", "headers": {"X-A": "{{ input.x }}"}}, "headers.X-A"),
        ({"base_url": "http://h:99999/"}, "base_url"),
        ({"base_url": "http://u:p@/"}, "base_url"),
        ({"base_url": "http://{{ secrets.H | lower }}/"}, "base_url"),
    ],
)
def test_a_service_that_no_call_could_use_is_refused_naming_the_field(
    data: dict[str, object], field: str
) -> None:
    with pytest.raises(LegatoError) as refused:
        Service.from_dict({"name": "s", **data})
    assert [p.path for p in refused.value.problems] == [field]  # type: ignore[attr-defined]
    # An entry stored before these checks still loads (its calls fail) rather than stop a start.
    assert Service.from_dict({"name": "s", **data}, strict=False).name == "s"


def test_a_service_may_name_secrets_and_put_a_path_before_its_query() -> None:
    svc = Service.from_dict(
        {
            "name": "s",
            "base_url": "http://{{ secrets.HOST }}/base?api_key={{secrets.K}}",
            "token": "{{ secrets.T }}",
            "headers": {"X-Key": "k {{ secrets.K }}"},
        }
    )
    assert (
        Service("s", "http://h/base?api_key=K&x=1#f").url("/p") == "http://h/base/p?api_key=K&x=1#f"
    )
    assert svc.url("") == svc.base_url


def test_masking_a_long_message_takes_time_in_proportion_to_its_length() -> None:
    """A long run of scheme-like letters with no `://` once cost the square of its length (a 1 MB
    failure message held the server for minutes): ten times the text is about ten times the time."""

    def took(n: int) -> float:
        text = "a" * n + " ://"  # a `://` somewhere, so the URL pattern runs over the letters
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            mask_text(text)
            best = min(best, time.perf_counter() - began)
        return best

    took(1000)  # warm up
    small, large = took(5_000), took(50_000)
    assert large < 40 * max(small, 1e-3), (small, large)
    assert mask_text("a" * 100 + "http://u:pw@h/") == "a" * 100 + "http://u:***@h/"
