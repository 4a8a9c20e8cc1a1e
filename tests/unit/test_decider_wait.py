"""Wait steps: a durable timer for a duration or until a time; early timers re-arm, restarts re-arm."""

from __future__ import annotations

import pytest

from legato.engine.state import Cancel, Resume, Wake
from legato.errors import DefinitionError
from legato.model.durations import parse_time
from tests.unit.decider_support import Run, aborted, build, executed, schedules

URL = "http://svc.test/"


def test_a_wait_for_a_duration_holds_the_next_step_until_it_is_due() -> None:
    run = Run(
        build({"pause": {"wait": "10m"}, "after": {"http": {"url": URL}, "depends_on": "pause"}})
    )
    d = run.start()
    pause = run.step("pause")
    assert (pause.status, pause.reason, pause.next_at) == ("waiting", "timer", 700.0)
    assert [s.at for s in schedules(d)] == [700.0]
    assert executed(d) == []
    d = run.send(Wake("pause"), at=699.9)  # a timer that fired early
    assert run.status("pause") == "waiting" and [s.at for s in schedules(d)] == [700.0]
    d = run.send(Wake("pause"), at=700.0)
    assert run.status("pause") == "succeeded"
    assert run.step("pause").output == {"until": 700.0}
    assert executed(d) == ["after"]


def test_a_wait_until_a_time_renders_it_from_the_run() -> None:
    wf = build(
        {"ship": {"wait": {"until": "{{ input.at }}"}}},
        inputs=[{"name": "at", "type": "string"}],
    )
    run = Run(wf, {"at": "1970-01-01T00:05:00Z"})
    d = run.start()
    assert [s.at for s in schedules(d)] == [300.0]
    past = Run(wf, {"at": "1970-01-01T00:00:01+00:00"})
    past.start()
    assert past.status("ship") == "succeeded" and past.run_status == "succeeded"


def test_a_bad_time_fails_the_step() -> None:
    run = Run(build({"ship": {"wait": {"until": "{{ input.at }}"}}}), {"at": "tomorrow-ish"})
    run.start()
    error = run.step("ship").error
    assert run.status("ship") == "failed" and error is not None
    assert error["kind"] == "template" and "ISO 8601" in error["message"]


def test_a_restart_rearms_the_wait_at_its_stored_time_and_cancel_ends_it() -> None:
    run = Run(build({"pause": {"wait": {"for": 30}}}))
    run.start()
    d = run.send(Resume(), at=110.0)
    assert [s.at for s in schedules(d)] == [130.0]  # not 140: the wait is not restarted
    d = run.send(Cancel("stop"))
    assert aborted(d) == ["pause"] and run.status("pause") == "cancelled"


@pytest.mark.parametrize(
    ("wait", "message"),
    [
        ({"for": "1m", "until": "x"}, "exactly one of for"),
        ({}, "exactly one of for"),
        ("soon", "must be a duration"),
        ({"for": "1m", "extra": 1}, "not a known field"),
    ],
)
def test_bad_waits_are_refused(wait: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        build({"pause": {"wait": wait}})


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_time("1970-01-01 00:00:30") == 30.0  # no offset: UTC
    assert parse_time(12.5) == 12.5
    for bad in ("noon", True, None, float("inf")):
        with pytest.raises(ValueError, match="must be"):
            parse_time(bad)
