"""Review fixes to the retry rules: settings merge field by field (a service's `retries: 0` survives
an unrelated `retry_delay` above it); a job that may still be running is resubmitted only under a
written `on` naming `timeout`; Retry-After gets a spread and its stored value a cap; no hot loop."""

from __future__ import annotations

from typing import Any

import pytest

from legato.engine.decider import retry_delay
from legato.engine.state import FAILED, WAITING, Wake
from legato.errors import DefinitionError
from legato.model.service import Service
from legato.model.workflow import DEFAULT_RETRY, RetryPolicy
from tests.unit.decider_support import Run, build

URL = "http://svc.test/"


def service(retry: Any) -> RetryPolicy:
    policy = Service.from_dict({"name": "svc", "base_url": URL, "retry": retry}).retry
    assert policy is not None
    return policy


def run_of(step: dict[str, Any], svc: Any = None, **top: Any) -> Run:
    run = Run(build({"a": step}, **top), now=0.0)
    if svc is not None:
        run.service_retry = {"svc": service(svc)}.get
    run.start()
    return run


def attempts(run: Run, kind: str = "timeout") -> int:
    for attempt in range(1, 10):
        run.fail("a", kind)
        if run.status("a") == FAILED:
            return attempt
        run.send(Wake("a"), at=run.step("a").next_at)
    raise AssertionError("still retrying")


@pytest.mark.parametrize(
    ("step", "top"),
    [
        ({}, {}),
        ({}, {"defaults": {"retry_delay": "5s"}}),
        ({}, {"defaults": {"retry_backoff": 3}}),
        ({"retry": {"delay": "5s"}}, {}),
    ],
)
def test_a_services_retry_0_survives_unrelated_fields_above_it(
    step: dict[str, Any], top: dict[str, Any]
) -> None:
    run = run_of({"http": {"service": "svc"}, **step}, svc=0, **top)
    assert attempts(run) == 1


def test_fields_merge_one_by_one_and_the_nearest_level_wins() -> None:
    run = run_of(
        {"http": {"service": "svc"}, "retry": {"delay": "7s", "jitter": False}},
        svc={"retries": 1, "delay": "1s"},
        defaults={"retry_backoff": 3},
    )
    run.fail("a", "5xx")
    assert run.step("a").next_at == 7.0  # the step's delay, the service's retries
    run.send(Wake("a"), at=7.0)
    run.fail("a", "5xx")
    assert run.status("a") == FAILED
    step = run_of({"http": {"service": "svc"}, "retry": 0}, svc=4)
    assert attempts(step, "5xx") == 1  # the step's own `retries` beats the service's


def test_a_services_setting_is_stored_as_written() -> None:
    s = Service.from_dict({"name": "svc", "base_url": URL, "retry": {"retries": 0}})
    assert s.to_dict()["retry"] == {"retries": 0}
    again = Service.from_dict(s.to_dict())
    assert again.retry is not None and again.retry.given == {"retries"}


def deadline(step: dict[str, Any], svc: Any = None, **top: Any) -> str:
    run = run_of({"http": {"service": "svc", "async": True}, "timeout": 10, **step}, svc, **top)
    run.ok("a", status=202, at=1.0)
    run.send(Wake("a"), at=10.0)
    return run.status("a")


def test_a_job_past_its_deadline_is_resubmitted_only_when_timeout_is_written() -> None:
    assert deadline({}) == FAILED
    assert deadline({"retry": 3}) == FAILED
    assert deadline({}, defaults={"retries": 3}) == FAILED
    assert deadline({}, svc=3) == FAILED
    assert deadline({}, svc={"retries": 3, "on": ["timeout"]}) == WAITING
    assert deadline({}, defaults={"retry_on": ["timeout"]}) == WAITING
    assert deadline({"retry": {"on": ["timeout"]}}) == WAITING


@pytest.mark.parametrize("kind", ["timeout", "network", "5xx"])
def test_a_job_submission_that_timed_out_is_not_resent_by_default(kind: str) -> None:
    for how in ({"async": True}, {"poll": {"every": "1s", "url": URL}}):
        run = run_of({"http": {"url": URL, **how}, "timeout": 60})
        run.fail("a", kind)
        # A timed-out submission may have reached the service: not sent again unless written.
        assert run.status("a") == (FAILED if kind == "timeout" else WAITING)
        named = {"retry": {"on": ["timeout"]}}
        run = run_of({"http": {"url": URL, **how}, "timeout": 60, **named})
        run.fail("a", "timeout")
        assert run.status("a") == WAITING
    plain = run_of({"http": {"url": URL}})
    plain.fail("a", "timeout")
    assert plain.status("a") == WAITING  # a plain call keeps its Idempotency-Key: re-sent


def test_retry_after_has_a_spread_above_its_floor() -> None:
    policy = DEFAULT_RETRY
    low, high = retry_delay(policy, 1, 0.0, 30), retry_delay(policy, 1, 0.99, 30)
    assert low == 30.0 and 32.9 < high < 33.0
    assert 1.9 < retry_delay(policy, 1, 0.99, 1) <= 2.0  # at least 1 s of spread
    calm = RetryPolicy(retries=2, jitter=False)
    assert retry_delay(calm, 1, 0.99, 30) == 30.0


def test_the_stored_retry_after_is_capped_like_the_wait() -> None:
    run = run_of({"http": {"url": URL}, "retry": {"max_delay": "60s"}})
    error = {"kind": "5xx", "message": "later", "retry_after": 1e23}
    run.done("a", ok=False, error=error, at=0.0, rand=0.0)
    stored = run.step("a").error
    assert stored is not None and stored["retry_after"] == 60.0
    history = run.decisions[-1].attempts[-1].error
    assert history is not None and history["retry_after"] == 60.0  # the attempt's record too
    assert run.step("a").next_at == 60.0


@pytest.mark.parametrize(
    ("retry", "field", "message"),
    [
        ({"retries": 10**9}, "retry.retries", "must be at most 1000"),
        ({"retries": 11, "delay": "0s"}, "retry.delay", "at least 0.1s"),
        ({"retries": 50, "max_delay": "0s"}, "retry.max_delay", "at least 0.1s"),
    ],
)
def test_a_hot_retry_loop_is_refused_naming_the_field(
    retry: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(DefinitionError) as err:
        build({"a": {"http": {"url": URL}, "retry": retry}})
    assert f"steps.a.{field}: " in str(err.value) and message in str(err.value)
    with pytest.raises(DefinitionError) as err:
        Service.from_dict({"name": "svc", "base_url": URL, "retry": retry})
    assert f"{field}: " in str(err.value)
    build({"a": {"http": {"url": URL}, "retry": {"retries": 10, "delay": "0s"}}})  # a few: fine


def test_a_hot_loop_in_defaults_is_refused_under_its_own_name() -> None:
    with pytest.raises(DefinitionError) as err:
        build({"a": {"http": {"url": URL}}}, defaults={"retries": 20, "retry_delay": "0s"})
    assert "defaults.retry_delay: must be at least 0.1s" in str(err.value)


def test_past_ten_retries_the_wait_is_never_below_a_floor() -> None:
    # Levels merged at run time (a service's retries, a step's delay) cannot make a hot loop.
    assert retry_delay(RetryPolicy(retries=100, delay=0.0, max_delay=0.0), 11, 0.5, None) == 0.1
    assert retry_delay(RetryPolicy(retries=100, delay=0.0, max_delay=0.0), 3, 0.5, None) == 0.0


def test_a_job_submission_cut_after_sending_is_resent_only_when_network_is_written() -> None:
    for how in ({"async": True}, {"poll": {"every": "1s", "url": URL}}):
        sent = {"kind": "network", "message": "server disconnected", "sent": True}
        run = run_of({"http": {"url": URL, **how}, "timeout": 60})
        run.done("a", None, ok=False, error=sent)
        assert run.status("a") == FAILED  # the job may exist at the service
        for written in ({"retry": {"on": ["network"]}}, {"retry": {"on": ["timeout"]}}):
            run = run_of({"http": {"url": URL, **how}, "timeout": 60, **written})
            run.done("a", None, ok=False, error=sent)
            assert run.status("a") == (WAITING if "network" in written["retry"]["on"] else FAILED)
        # A failure to connect sent nothing: retried by default.
        run = run_of({"http": {"url": URL, **how}, "timeout": 60})
        run.done("a", None, ok=False, error={"kind": "network", "message": "refused"})
        assert run.status("a") == WAITING
    plain = run_of({"http": {"url": URL}})
    plain.done("a", None, ok=False, error={"kind": "network", "message": "reset", "sent": True})
    assert plain.status("a") == WAITING  # a plain call keeps its Idempotency-Key: re-sent
