"""Retries: which failures retry, the backoff delay with jitter and cap, Wake, exhaustion, template errors."""

from __future__ import annotations

from typing import Any

import pytest

from legato.engine.state import FAILED, RUNNING, SUCCEEDED, WAITING, Schedule, Wake
from tests.unit.decider_support import Run, build, executed, executes, finished, schedules


def retrying(**retry: Any) -> Run:
    policy = {"retries": 3, "delay": "2s", "backoff": 2, "jitter": False, **retry}
    run = Run(
        build(
            {
                "a": {
                    "http": {"url": "http://svc.test/", "json": {"n": "{{ input.n }}"}},
                    "retry": policy,
                },
                "b": {"http": {"url": "http://svc.test/b"}, "depends_on": "a"},
            }
        ),
        {"n": 1},
        now=0.0,
    )
    run.start()
    return run


def test_5xx_retries_after_the_delay() -> None:
    run = retrying()
    d = run.fail("a", "5xx", "answered 503", at=1.0)
    a = run.step("a")
    assert a.status == WAITING
    assert a.next_at == 3.0
    assert a.error == {"kind": "5xx", "message": "answered 503"}
    assert a.finished_at == 1.0
    assert schedules(d) == [Schedule("a", 3.0)]
    assert executed(d) == []
    assert run.run_status == RUNNING
    assert finished(d) == []


def test_wake_redispatches_with_a_new_attempt() -> None:
    run = retrying()
    first = run.step("a").request
    run.fail("a", "5xx", at=1.0)
    d = run.send(Wake("a"), at=3.0)
    (e,) = executes(d)
    assert (e.step, e.attempt) == ("a", 2)
    assert e.request == first == {"method": "POST", "url": "http://svc.test/", "json": {"n": 1}}
    a = run.step("a")
    assert (a.status, a.attempt, a.tries, a.started_at, a.next_at, a.error) == (
        RUNNING,
        2,
        2,
        3.0,
        None,
        None,
    )
    run.ok("a", at=4.0)
    assert run.status("b") == RUNNING


@pytest.mark.parametrize("kind", ["5xx", "429", "network", "timeout"])
def test_default_retry_kinds(kind: str) -> None:
    run = retrying()
    run.fail("a", kind)
    assert run.status("a") == WAITING


@pytest.mark.parametrize("kind", ["4xx", "status", "exception", "output", "input", "config"])
def test_no_retry_on_other_kinds_by_default(kind: str) -> None:
    run = retrying()
    d = run.fail("a", kind)
    assert run.status("a") == FAILED
    assert schedules(d) == []
    assert run.run_status == FAILED


def test_retry_on_can_add_4xx() -> None:
    run = retrying(on=["4xx"])
    run.fail("a", "4xx")
    assert run.status("a") == WAITING
    run2 = retrying(on=["4xx"])
    run2.fail("a", "5xx")
    assert run2.status("a") == FAILED


def test_exponential_backoff_without_jitter_is_exact() -> None:
    run = retrying(retries=4, delay="1s", backoff=3, max_delay="1h")
    delays = []
    for t in (10.0, 20.0, 30.0, 40.0):
        d = run.fail("a", "5xx", at=t)
        (sch,) = schedules(d)
        delays.append(sch.at - t)
        run.send(Wake("a"), at=t + 5)
    assert delays == [1.0, 3.0, 9.0, 27.0]


def test_backoff_capped_by_max_delay() -> None:
    run = retrying(retries=5, delay="10s", backoff=10, max_delay="30s")
    first = schedules(run.fail("a", "5xx", at=0.0))[0].at
    run.send(Wake("a"), at=50.0)
    second = schedules(run.fail("a", "5xx", at=60.0))[0].at
    assert first == 10.0
    assert second == 90.0  # min(30, 10 * 10)


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.5), (0.5, 0.75), (0.99, 0.995)])
def test_jitter_scales_the_delay(rand: float, factor: float) -> None:
    run = retrying(jitter=True, delay="4s")
    run.fail("a", "5xx", at=0.0, rand=0.9)
    run.send(Wake("a"), at=10.0)
    d = run.fail("a", "5xx", at=20.0, rand=rand)  # second failure: base delay 4 * 2 = 8
    (sch,) = schedules(d)
    assert sch.at == pytest.approx(20.0 + 8.0 * factor)


def test_jitter_with_rand_zero_halves_the_first_delay() -> None:
    run = retrying(jitter=True, delay="4s")
    d = run.fail("a", "5xx", at=0.0, rand=0.0)
    assert schedules(d) == [Schedule("a", 2.0)]


def test_retries_exhausted_fail_the_step_and_run() -> None:
    run = retrying(retries=2)
    for t in (1.0, 2.0):
        run.fail("a", "5xx", at=t)
        assert run.status("a") == WAITING
        run.send(Wake("a"), at=t + 0.5)
    d = run.fail("a", "5xx", "answered 502", at=5.0)
    a = run.step("a")
    assert (a.status, a.attempt, a.tries) == (FAILED, 3, 3)
    assert schedules(d) == []
    assert run.status("b") == "skipped"
    assert run.run_status == FAILED
    err = run.state.info.error
    assert err == {"kind": "step_failed", "step": "a", "message": "step 'a' failed: answered 502"}
    assert finished(d) == [FAILED]
    assert [x.attempt for x in d.attempts] == [3]


def test_zero_retries_fails_at_once() -> None:
    run = retrying(retries=0)
    run.fail("a", "5xx")
    assert run.status("a") == FAILED


def test_workflow_defaults_drive_retries() -> None:
    run = Run(
        build(
            {"a": {"http": {"url": "http://svc.test/"}}},
            defaults={"retries": 1, "retry_delay": "500ms", "retry_jitter": False},
        ),
        now=0.0,
    )
    run.start()
    d = run.fail("a", "5xx", at=1.0)
    assert schedules(d) == [Schedule("a", 1.5)]


def test_wake_is_ignored_unless_the_step_waits() -> None:
    run = retrying()
    d = run.send(Wake("a"))
    assert d.empty and d.effects == []
    d = run.send(Wake("b"))
    assert d.empty and d.effects == []


def test_wake_after_run_ended_is_ignored() -> None:
    run = retrying()
    run.fail("a", "5xx")
    from legato.engine.state import Cancel

    run.send(Cancel())
    d = run.send(Wake("a"))
    assert d.empty and d.effects == []


def test_stale_answer_of_previous_attempt_after_retry_is_ignored() -> None:
    run = retrying()
    run.fail("a", "5xx", at=1.0)
    run.send(Wake("a"), at=3.0)
    d = run.done("a", "late", attempt=1)
    assert d.empty
    assert run.status("a") == RUNNING
    assert run.step("a").attempt == 2


# -- template errors ----------------------------------------------------------------------------------


def test_template_error_at_dispatch_fails_the_step_with_kind_template() -> None:
    run = Run(
        build(
            {
                "a": {
                    "http": {"url": "http://svc.test/", "json": {"x": "{{ input.missing }}"}},
                    "retry": 3,
                },
                "b": {"http": {"url": "http://svc.test/"}},
            }
        )
    )
    d = run.start()
    assert executed(d) == ["b"]
    a = run.step("a")
    assert a.status == FAILED  # template is not a retried kind
    assert a.error is not None
    assert a.error["kind"] == "template"
    assert "undefined" in a.error["message"]
    assert a.attempt == 1
    run.ok("b")
    assert run.run_status == FAILED
    assert run.state.info.error is not None and run.state.info.error["step"] == "a"


def test_template_error_of_downstream_step_uses_upstream_output() -> None:
    run = Run(
        build(
            {
                "a": {"http": {"url": "http://svc.test/"}},
                "b": {
                    "http": {"url": "http://svc.test/", "json": "{{ steps.a.output.body.id }}"},
                    "depends_on": "a",
                },
            }
        )
    )
    run.start()
    d = run.ok("a", {"no_id": True})
    assert executed(d) == []
    b = run.step("b")
    assert b.status == FAILED
    assert b.error is not None and b.error["kind"] == "template"
    assert run.run_status == FAILED


def test_bad_url_render_is_a_template_error() -> None:
    run = Run(build({"a": {"http": {"url": "{{ input.where }}"}}}), {"where": "ftp://x"})
    run.start()
    err = run.step("a").error
    assert err is not None and err["kind"] == "template"
    assert "absolute http(s) URL" in err["message"]


def test_query_not_a_mapping_is_a_template_error() -> None:
    run = Run(
        build({"a": {"http": {"url": "http://svc.test/", "query": "{{ input.q }}"}}}), {"q": [1]}
    )
    run.start()
    err = run.step("a").error
    assert err is not None and err["kind"] == "template"
    assert err["message"] == "http.query must render to a mapping, got list"


def test_query_and_headers_values_become_strings() -> None:
    run = Run(
        build(
            {
                "a": {
                    "http": {
                        "url": "http://svc.test/",
                        "query": {"n": "{{ input.n }}", "f": True, "skip": None},
                        "headers": {"x-id": "{{ input.n }}"},
                    }
                }
            }
        ),
        {"n": 5},
    )
    (e,) = executes(run.start())
    assert e.request["query"] == {"n": "5", "f": "true"}
    assert e.request["headers"] == {"x-id": "5"}


def test_template_errors_retry_when_the_policy_says_so() -> None:
    run = Run(
        build(
            {
                "a": {
                    "http": {"url": "http://svc.test/", "json": "{{ input.x }}"},
                    "retry": {"retries": 1, "on": ["template"], "delay": 1, "jitter": False},
                }
            }
        ),
        now=0.0,
    )
    d = run.start()
    assert run.status("a") == WAITING
    assert schedules(d) == [Schedule("a", 1.0)]
    d = run.send(Wake("a"), at=1.0)
    assert run.status("a") == FAILED
    assert run.step("a").attempt == 2
    assert run.run_status == FAILED
    assert finished(d) == [FAILED]


def test_success_after_retry_completes_run() -> None:
    run = retrying()
    run.fail("a", "5xx", at=1.0)
    run.send(Wake("a"), at=3.0)
    run.ok("a", at=4.0)
    d = run.ok("b", at=5.0)
    assert run.run_status == SUCCEEDED
    assert finished(d) == [SUCCEEDED]
