"""Schedules: the definition fields and their problems, and the pure calendar math of intervals."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from legato import dsl
from legato.engine.ids import scheduled_run_id
from legato.errors import DefinitionError
from legato.model.build import build_workflow
from legato.model.schedule import Schedule, iso


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def definition(**extra: Any) -> dict[str, Any]:
    return {"name": "w", **extra, "steps": {"a": {"wait": "1s"}}}


def problems(**extra: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        build_workflow(definition(**extra))
    return [(p.path, p.message) for p in info.value.problems]


def test_presets_cron_and_intervals_are_read() -> None:
    daily = build_workflow(definition(schedule="@daily", catchup=False, max_active_runs=2))
    assert daily.schedule == Schedule(cron="0 0 * * *", catchup=False, max_active_runs=2)
    cron = build_workflow(definition(schedule="*/5 * * * *", start_date="2026-01-01"))
    assert cron.schedule is not None and cron.schedule.start == at("2026-01-01T00:00:00")
    every = build_workflow(definition(schedule="90s", end_date=1000))
    assert every.schedule == Schedule(every=90.0, end=1000.0)
    assert build_workflow(definition()).schedule is None


def test_schedule_problems_name_their_field() -> None:
    assert problems(schedule="61 * * * *") == [
        ("schedule", "is not a valid cron expression: '61 * * * *'")
    ]
    assert problems(schedule="every tuesday")[0][1].startswith("must be a cron expression")
    assert problems(schedule="@sometimes")[0][0] == "schedule"
    assert problems(schedule="500ms") == [("schedule", "an interval must be at least 1s")]
    assert problems(catchup=True) == [("catchup", "needs a `schedule`")]
    assert problems(schedule="1h", max_active_runs=0) == [("max_active_runs", "must be at least 1")]
    assert problems(schedule="1h", start_date="2026-02-01", end_date="2026-01-01") == [
        ("end_date", "must be after start_date")
    ]
    assert problems(schedule="1h", inputs={"day": "string"})[0][0] == "inputs"
    assert problems(tags=["ok", "not ok"])[0][0] == "tags"


def test_default_args_is_the_airflow_name_of_defaults() -> None:
    wf = build_workflow(definition(default_args={"retries": 3, "retry_delay": "2s"}, tags=["etl"]))
    assert wf.steps["a"].retry.retries == 3 and wf.steps["a"].retry.delay == 2.0
    assert wf.tags == ("etl",)
    assert problems(defaults={}, default_args={})[0][0] == "default_args"


def test_the_dsl_declares_a_schedule() -> None:
    @dsl.workflow(
        schedule="@hourly",
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        tags=["x"],
        default_args={"retries": 1},
    )
    def hourly() -> None:
        dsl.fail("w")

    assert hourly.schedule is not None and hourly.schedule.cron == "0 * * * *"
    assert hourly.schedule.start == at("2026-01-01T00:00:00") and not hourly.schedule.catchup
    assert hourly.tags == ("x",) and hourly.steps["w"].retry.retries == 1


def test_an_interval_is_due_once_it_is_over() -> None:
    daily = Schedule(cron="0 0 * * *")
    now = at("2026-01-05T12:00:00")
    first = daily.first(now)
    assert first == at("2026-01-05T00:00:00")  # the interval under way
    assert daily.due(first, now) is None
    assert daily.next_fire(first) == at("2026-01-06T00:00:00")
    assert daily.due(first, at("2026-01-06T00:00:00")) == (first, at("2026-01-06T00:00:00"))


def test_catchup_runs_every_missed_interval_without_only_the_latest() -> None:
    start = at("2026-01-01T00:00:00")
    now = at("2026-01-04T06:00:00")
    catchup = Schedule(cron="0 0 * * *", start=start)
    assert catchup.first(now) == start
    assert catchup.due(start, now) == (start, at("2026-01-02T00:00:00"))
    latest = Schedule(cron="0 0 * * *", start=start, catchup=False)
    assert latest.due(start, now) == (at("2026-01-03T00:00:00"), at("2026-01-04T00:00:00"))


def test_intervals_count_from_the_start_date_and_stop_at_the_end_date() -> None:
    every = Schedule(every=10.0, start=5.0, end=40.0)
    assert every.first(100.0) == 5.0
    assert every.due(5.0, 14.9) is None
    assert every.due(5.0, 15.0) == (5.0, 15.0)
    assert every.due(35.0, 100.0) == (35.0, 45.0)  # starts before the end date: it runs
    assert every.due(45.0, 100.0) is None and every.next_fire(45.0) is None
    assert Schedule(every=10.0, start=50.0, end=40.0).first(0.0) is None
    assert iso(at("2026-03-01T00:00:00")) == "2026-03-01T00:00:00Z"


def test_a_scheduled_run_id_is_fixed_by_its_interval() -> None:
    one = scheduled_run_id("w", 1000.0)
    assert one == scheduled_run_id("w", 1000.0) and len(one) == 32
    assert one != scheduled_run_id("w", 1001.0) and one != scheduled_run_id("v", 1000.0)
    assert int(one, 16) >= 0


def test_notifications_are_read_with_airflow_defaults() -> None:
    wf = build_workflow(
        definition(
            email="ops@example.com",
            email_on_retry=True,
            webhooks=[{"url": "https://hooks.example/x", "on": ["success", "failure"]}],
        )
    )
    assert wf.notify.email == ("ops@example.com",)
    assert wf.notify.email_on == {"failure", "retry"}  # failure by default, as in Airflow
    assert wf.notify.wants("success") and not build_workflow(definition()).notify.wants("failure")
    assert problems(email_on_failure=True) == [
        ("email_on_failure", "needs `email`, the addresses to write to")
    ]
    assert problems(email=["nobody"])[0] == ("email", "'nobody' is not an email address")
    assert problems(webhooks=[{"url": "ftp://x", "on": ["sometimes"]}]) == [
        ("webhooks[0].url", "must be an http:// or https:// URL"),
        ("webhooks[0].on", "unknown event 'sometimes'; known: failure, retry, success"),
    ]


def test_a_decision_says_which_events_to_notify() -> None:
    from legato.engine.notifier import events_of, sign
    from legato.engine.state import Decision, RunInfo, StepState

    failed = RunInfo("r", "w", 1, "failed", {}, 1.0, 1.0, 2.0, error={"message": "x"})
    assert events_of(Decision("r", "w", failed)) == [("failure", {})]
    retrying = StepState("s", "waiting", 1, 1, 1.0, 1.5, 3.0, error={"kind": "5xx"})
    timer = StepState("t", "waiting", 1, 1, 1.0, next_at=3.0)  # a wait step: no error
    [(event, detail)] = events_of(Decision("r", "w", None, {"s": retrying, "t": timer}))
    assert event == "retry" and detail["step"] == "s" and detail["error"] == {"kind": "5xx"}
    assert sign("k", "1", b"{}") == sign("k", "1", b"{}") != sign("k", "2", b"{}")


def test_a_cron_that_never_matches_and_dates_out_of_range_are_refused() -> None:
    assert problems(schedule="0 0 31 2 *") == [("schedule", "never matches a date: '0 0 31 2 *'")]
    found = problems(schedule="@daily", start_date=1_700_000_000_000, end_date=-5)
    assert {p for p, _ in found} == {"start_date", "end_date"}


def test_without_catchup_an_ended_schedule_still_runs_its_last_interval() -> None:
    daily = Schedule(cron="0 0 * * *", end=at("2024-01-05T12:00:00"), catchup=False)
    # Down from the 2nd to the 10th: the latest interval that starts before the end runs.
    assert daily.due(at("2024-01-02T00:00:00"), at("2024-01-10T08:00:00")) == (
        at("2024-01-05T00:00:00"),
        at("2024-01-06T00:00:00"),
    )
    assert daily.next_fire(at("2024-01-06T00:00:00")) is None  # and then it has ended


def test_a_new_calendar_moves_the_schedule_no_earlier_than_its_start_date() -> None:
    later = Schedule(cron="0 0 * * *", start=at("2024-02-01T00:00:00"))
    assert later.moved(at("2024-01-10T00:00:00"), at("2024-01-20T00:00:00")) == at(
        "2024-02-01T00:00:00"
    )
    hourly = Schedule(every=3600.0, start=at("2024-01-01T00:30:00"))
    assert hourly.moved(at("2024-01-10T00:00:00"), 0.0) == at("2024-01-10T00:30:00")
    ended = Schedule(cron="0 0 * * *")
    assert ended.moved(None, at("2024-03-03T05:00:00")) == at("2024-03-03T00:00:00")
