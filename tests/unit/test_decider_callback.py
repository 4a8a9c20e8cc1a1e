"""Async calls: a success answer only accepts the job; the step waits for its callback (output, error or
heartbeat) within its timeout and heartbeat interval; stale and repeated callbacks change nothing."""

from __future__ import annotations

from typing import Any

import pytest

from legato.engine.decider import CALLBACK
from legato.engine.state import Callback, Wake
from legato.errors import DefinitionError
from tests.unit.decider_support import Run, aborted, build, executed, schedules

URL = "http://svc.test/"


def async_step(**extra: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"url": URL, "async": True}
    if "heartbeat" in extra:
        call["heartbeat"] = extra.pop("heartbeat")
    return {"http": call, **extra}


def started(steps: dict[str, Any]) -> Run:
    run = Run(build(steps))
    run.start()
    return run


def test_an_accepted_call_waits_for_its_callback_and_its_output_succeeds_the_step() -> None:
    run = started({"job": async_step(), "after": {"http": {"url": URL}, "depends_on": "job"}})
    d = run.ok("job", {"accepted": True}, status=202)
    job = run.step("job")
    assert (job.status, job.reason, job.next_at) == ("waiting", CALLBACK, None)
    assert job.output == {"status": 202, "body": {"accepted": True}}
    assert executed(d) == [] and schedules(d) == []
    assert run.status("after") == "pending"
    d = run.send(Callback("job", 1, output={"result": 42}), at=150.0)
    assert run.status("job") == "succeeded"
    assert run.step("job").output == {"result": 42}
    assert run.step("job").reason is None
    assert executed(d) == ["after"]


def test_a_refused_call_fails_like_any_call() -> None:
    run = started({"job": async_step()})
    run.fail("job", "4xx", "bad request")
    assert run.status("job") == "failed"
    assert run.run_status == "failed"


def test_a_callback_error_fails_the_attempt_and_retries_apply() -> None:
    run = started(
        {"job": async_step(retry={"retries": 1, "delay": 5, "jitter": False, "on": ["callback"]})}
    )
    run.ok("job", status=202)
    d = run.send(Callback("job", 1, error={"message": "out of paper"}), at=110.0)
    job = run.step("job")
    assert job.status == "waiting" and job.reason is None and job.next_at == 115.0
    assert job.error == {"kind": "callback", "message": "out of paper"}
    assert [s.at for s in schedules(d)] == [115.0]
    assert [a.status for a in d.attempts] == ["failed"]
    d = run.send(Wake("job"), at=115.0)
    assert executed(d) == ["job"] and run.step("job").attempt == 2  # a new attempt, a new token
    run.ok("job", status=202)
    run.send(Callback("job", 2, error={"message": "still out"}), at=120.0)
    assert run.status("job") == "failed" and run.run_status == "failed"


def test_a_second_or_stale_callback_changes_nothing() -> None:
    run = started({"job": async_step(retry={"retries": 1, "delay": 1, "on": ["callback"]})})
    run.ok("job", status=202)
    assert run.send(Callback("job", 2, output=1)).empty  # an attempt that does not exist yet
    run.send(Callback("job", 1, error={"message": "no"}))
    assert run.send(Callback("job", 1, output=1)).empty  # that attempt is over
    run.send(Wake("job"), at=run.step("job").next_at)
    assert run.send(Callback("job", 1, output=1)).empty  # still over, though the step waits again
    run.ok("job", status=202)
    run.send(Callback("job", 2, output="done"))
    assert run.step("job").output == "done"
    assert run.send(Callback("job", 2, output="again")).empty


def test_the_step_timeout_bounds_the_wait_for_the_callback() -> None:
    run = started({"job": async_step(timeout=30)})
    d = run.ok("job", status=202, at=101.0)
    assert [s.at for s in schedules(d)] == [130.0]  # from the attempt's start (100), not the answer
    run.send(Wake("job"), at=130.0)
    job = run.step("job")
    assert job.status == "failed"
    assert job.error == {
        "kind": "timeout",
        "message": "no callback within the step's timeout of 30s",
    }


def test_heartbeats_push_the_deadline_until_the_timeout() -> None:
    run = started({"job": async_step(heartbeat=10, timeout=25)})
    d = run.ok("job", status=202, at=100.0)
    assert [s.at for s in schedules(d)] == [110.0]
    d = run.send(Callback("job", 1, heartbeat=True), at=108.0)
    assert [s.at for s in schedules(d)] == [118.0]
    assert run.step("job").status == "waiting"
    d = run.send(Wake("job"), at=110.0)  # the timer the heartbeat replaced: re-armed, no failure
    assert run.step("job").status == "waiting"
    assert [s.at for s in schedules(d)] == [118.0]
    d = run.send(Callback("job", 1, heartbeat=True), at=117.0)
    assert [s.at for s in schedules(d)] == [125.0]  # capped by the timeout (100 + 25)
    run.send(Wake("job"), at=125.0)
    assert run.step("job").error == {
        "kind": "timeout",
        "message": "no callback within the step's timeout of 25s",
    }


def test_a_missed_heartbeat_fails_the_attempt() -> None:
    run = started({"job": async_step(heartbeat=10)})
    run.ok("job", status=202, at=100.0)
    run.send(Wake("job"), at=110.0)
    assert run.step("job").error == {"kind": "timeout", "message": "no heartbeat within 10s"}


def test_cancelling_a_run_ends_the_wait_and_records_the_attempt() -> None:
    run = started({"job": async_step(timeout=30)})
    run.ok("job", status=202)
    from legato.engine.state import Cancel

    d = run.send(Cancel("stop"))
    assert aborted(d) == ["job"]
    assert run.status("job") == "cancelled"
    assert [a.status for a in d.attempts] == ["cancelled"]


def test_resume_rearms_the_callback_deadline() -> None:
    from legato.engine.state import Resume

    run = started({"job": async_step(timeout=30)})
    run.ok("job", status=202)
    d = run.send(Resume())
    assert [s.at for s in schedules(d)] == [130.0]
    assert executed(d) == []


def test_heartbeat_needs_async() -> None:
    with pytest.raises(DefinitionError, match="applies only to an async call"):
        build({"job": {"http": {"url": URL, "heartbeat": "10s"}}})
