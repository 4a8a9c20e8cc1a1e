"""Retries by default: a step that calls out retries transient failures twice unless its step, its
workflow or its service says otherwise; `Retry-After` is honoured up to `max_delay`."""

from __future__ import annotations

from typing import Any

import pytest

from legato.engine.outcome import retry_after
from legato.engine.state import FAILED, WAITING, Wake
from legato.errors import DefinitionError
from legato.formats.loader import load_definition
from legato.model.service import Service
from legato.model.workflow import DEFAULT_RETRY, RetryPolicy
from tests.unit.decider_support import Run, build, schedules

URL = "http://svc.test/"


def run_of(step: dict[str, Any], **top: Any) -> Run:
    run = Run(build({"a": step}, **top), now=0.0)
    run.start()
    return run


def failures_until_failed(run: Run, kind: str = "5xx") -> int:
    """Fail every attempt of `a` until it fails for good; return the attempts made."""
    for attempt in range(1, 10):
        run.fail("a", kind)
        if run.status("a") == FAILED:
            return attempt
        run.send(Wake("a"), at=run.step("a").next_at)
    raise AssertionError("still retrying")


def test_an_http_step_makes_three_attempts_by_default_about_1s_then_2s_apart() -> None:
    run = run_of({"http": {"url": URL}})
    d = run.fail("a", "5xx", at=10.0, rand=0.999)
    assert [s.at for s in schedules(d)] == [pytest.approx(11.0, abs=0.01)]
    run.send(Wake("a"), at=11.0)
    d = run.fail("a", "5xx", at=12.0, rand=0.0)
    assert [s.at for s in schedules(d)] == [13.0]  # 2 s, jittered down to half at most
    run.send(Wake("a"), at=13.0)
    run.fail("a", "5xx", at=14.0)
    assert run.status("a") == FAILED and run.run_status == FAILED


@pytest.mark.parametrize("kind", ["network", "timeout", "429", "5xx"])
def test_transient_kinds_retry_by_default(kind: str) -> None:
    assert failures_until_failed(run_of({"http": {"url": URL}}), kind) == 3


@pytest.mark.parametrize("kind", ["4xx", "status", "output", "config", "egress"])
def test_other_kinds_fail_at_once(kind: str) -> None:
    assert failures_until_failed(run_of({"http": {"url": URL}}), kind) == 1


def test_a_python_exception_is_not_retried_by_default() -> None:
    run = run_of({"python": "os:getcwd"})
    assert failures_until_failed(run, "exception") == 1
    assert run.wf.steps["a"].retry.retries == 0


def test_emit_and_a_map_of_calls_retry_by_default_other_steps_do_not() -> None:
    wf = build(
        {
            "e": {"emit": {"transport": "t", "to": "x"}},
            "m": {"map": {"over": "{{ input.xs }}", "step": {"http": {"url": URL}}}},
            "p": {"map": {"over": "{{ input.xs }}", "step": {"python": "os:getcwd"}}},
            "w": {"wait": "1s"},
        }
    )
    assert wf.steps["e"].retry == DEFAULT_RETRY and wf.steps["m"].retry == DEFAULT_RETRY
    assert wf.steps["p"].retry.retries == 0 and wf.steps["w"].retry.retries == 0


@pytest.mark.parametrize(
    ("step", "top"),
    [
        ({"retry": 0}, {}),
        ({"retry": {"retries": 0}}, {}),
        ({}, {"defaults": {"retries": 0}}),
    ],
)
def test_retries_0_on_the_step_or_the_workflow_turns_it_off(
    step: dict[str, Any], top: dict[str, Any]
) -> None:
    run = run_of({"http": {"service": "svc"}, **step}, **top)
    run.service_retry = {"svc": RetryPolicy(retries=5)}.get  # both beat the service
    assert failures_until_failed(run) == 1


def test_the_services_setting_replaces_the_default_only() -> None:
    run = run_of({"http": {"service": "svc"}})
    run.service_retry = {"svc": RetryPolicy(retries=0)}.get
    assert failures_until_failed(run) == 1
    run = run_of({"http": {"service": "svc"}})
    run.service_retry = {"svc": RetryPolicy(retries=4, delay=0.1)}.get
    assert failures_until_failed(run) == 5
    other = run_of({"http": {"service": "other"}})
    other.service_retry = {"svc": RetryPolicy(retries=0)}.get
    assert failures_until_failed(other) == 3
    step = run_of({"http": {"service": "svc"}, "retry": {"retries": 1}})
    step.service_retry = {"svc": RetryPolicy(retries=0)}.get
    assert failures_until_failed(step) == 2  # the step's setting beats the service's


def test_fields_a_step_leaves_out_come_from_the_workflow_then_the_default() -> None:
    wf = build(
        {"a": {"http": {"url": URL}, "retry": {"delay": "5s"}}},
        defaults={"retry_backoff": 3},
    )
    assert wf.steps["a"].retry == RetryPolicy(retries=2, delay=5.0, backoff=3.0)


def test_retry_after_delays_the_next_attempt_up_to_max_delay() -> None:
    run = run_of({"http": {"url": URL}})
    error = {"kind": "429", "message": "slow down", "retry_after": 30.0}
    run.done("a", ok=False, error=error, at=10.0)
    assert run.step("a").next_at == 40.0 + 3.0 * 0.5  # the floor, plus a spread of up to 10%
    hostile = run_of({"http": {"url": URL}})
    error = {"kind": "503", "message": "later", "retry_after": 1e9}
    hostile.done("a", ok=False, error={**error, "kind": "5xx"}, at=10.0, rand=0.0)
    assert hostile.step("a").next_at == 10.0 + DEFAULT_RETRY.max_delay
    short = run_of({"http": {"url": URL}, "retry": {"delay": "10s", "jitter": False}})
    short.done("a", ok=False, error={"kind": "5xx", "message": "x", "retry_after": 1}, at=0.0)
    assert short.step("a").next_at == 10.0  # never sooner than the backoff


def test_a_job_past_the_steps_timeout_is_not_resubmitted_by_default() -> None:
    run = run_of({"http": {"url": URL, "async": True}, "timeout": 30})
    run.ok("a", status=202, at=1.0)
    run.send(Wake("a"), at=30.0)
    assert run.status("a") == FAILED
    written = run_of({"http": {"url": URL, "async": True}, "timeout": 30, "retry": 1})
    written.ok("a", status=202, at=1.0)
    written.send(Wake("a"), at=30.0)
    assert written.status("a") == FAILED  # `retry: 1` names no `timeout`: the job may still run
    named = {"retries": 1, "on": ["timeout"]}
    written = run_of({"http": {"url": URL, "async": True}, "timeout": 30, "retry": named})
    written.ok("a", status=202, at=1.0)
    written.send(Wake("a"), at=30.0)
    assert written.status("a") == WAITING  # a policy naming `timeout` resubmits it
    beat = run_of({"http": {"url": URL, "async": True, "heartbeat": 5}, "timeout": 30})
    beat.ok("a", status=202, at=1.0)
    beat.send(Wake("a"), at=6.0)
    assert beat.status("a") == WAITING  # a missed heartbeat: the job died, submit it again


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", {"retry_after": 2.0}),
        (" 120 ", {"retry_after": 120.0}),
        ("Thu, 01 Jan 1970 00:01:40 GMT", {"retry_after": 60.0}),
        ("Thu, 01 Jan 1970 00:00:10 GMT", {"retry_after": 0.0}),  # in the past: at once
        ("-5", {}),
        ("soon", {}),
        ("1e400", {}),
        ("", {}),
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(value: str, expected: dict[str, float]) -> None:
    assert retry_after({"Retry-After": value}, now=40.0) == expected
    assert retry_after({"retry-after": value}, now=40.0) == expected


def test_a_service_carries_a_retry_setting() -> None:
    s = Service.from_dict({"name": "s", "base_url": URL, "retry": 0})
    assert s.retry == RetryPolicy(retries=0)
    assert s.to_dict()["retry"]["retries"] == 0
    assert Service.from_dict(s.to_dict()) == s
    assert Service.from_dict({"name": "s", "base_url": URL}).retry is None
    with pytest.raises(DefinitionError) as err:
        Service.from_dict({"name": "s", "base_url": URL, "retry": {"retries": -1, "on": ["x"]}})
    assert "retry.retries: must not be negative" in str(err.value)
    assert "retry.on: unknown failure kind 'x'" in str(err.value)


def test_the_services_in_order_form_takes_retries() -> None:
    doc: dict[str, Any] = {"name": "w", "services": ["a", "b"]}
    plain = load_definition(doc, services={"a", "b"}).workflow
    assert plain.steps["a"].retry == DEFAULT_RETRY
    one = load_definition({**doc, "retries": 1}, services={"a", "b"}).workflow
    assert [s.retry.retries for s in one.steps.values()] == [1, 1]
    shaped = {**doc, "retries": {"retries": 4, "delay": "10ms"}}
    wf = load_definition(shaped, services={"a", "b"}).workflow
    assert wf.steps["b"].retry == RetryPolicy(retries=4, delay=0.01)
    with pytest.raises(DefinitionError) as err:
        load_definition({**doc, "retries": {"retries": -1, "tries": 2}}, services={"a", "b"})
    assert [str(p) for p in err.value.problems] == [
        "retries.retries: must not be negative",
        "retries.tries: is not a known field",
    ]
    with pytest.raises(DefinitionError) as err:
        load_definition({**doc, "retries": "lots"}, services={"a", "b"})
    assert "retries: must be a number of retries or a mapping" in str(err.value)
