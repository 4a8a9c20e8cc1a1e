"""Run-level events: Cancel, Timeout, Retry of a failed or cancelled run, and Resume after a restart."""

from __future__ import annotations

from legato.engine.state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    WAITING,
    Cancel,
    Resume,
    Retry,
    Schedule,
    StepState,
    Timeout,
    Wake,
)
from tests.unit.decider_support import (
    Run,
    aborted,
    build,
    executed,
    executes,
    finished,
    http,
    schedules,
)


def chain_run(**top: object) -> Run:
    """a -> b -> c, plus an independent d; a and d start at once."""
    run = Run(
        build(
            {
                "a": http("/a", retry={"retries": 2, "delay": "10s", "jitter": False}),
                "b": {
                    "http": {
                        "url": "http://svc.test/",
                        "json": {"from_a": "{{ steps.a.output.body }}"},
                    },
                    "depends_on": "a",
                },
                "c": http("/c", depends_on="b"),
                "d": http("/d"),
            },
            **top,
        ),
        now=0.0,
    )
    run.start()
    return run


# -- cancel -----------------------------------------------------------------------------------------


def test_cancel_marks_unfinished_steps_cancelled_and_aborts_running_ones() -> None:
    run = chain_run()
    run.ok("d", "D", at=1.0)
    run.fail("a", "5xx", at=2.0)  # a waits for its retry
    assert run.status("a") == WAITING
    d = run.send(Cancel("the user changed their mind"), at=3.0)
    assert sorted(aborted(d)) == ["a"]  # a's retry timer; d already finished, b and c never started
    assert run.status("d") == SUCCEEDED
    assert "d" not in d.steps
    for name in ("a", "b", "c"):
        s = run.step(name)
        assert s.status == CANCELLED
        assert s.reason == "the user changed their mind"
        assert s.finished_at == 3.0
        assert s.next_at is None
    info = run.state.info
    assert info.status == CANCELLED
    assert info.error == {"kind": "cancelled", "message": "the user changed their mind"}
    assert info.finished_at == 3.0
    assert info.output is None
    assert finished(d) == [CANCELLED]
    assert d.attempts == []  # a's failed attempt was recorded when it failed


def test_cancel_records_a_cancelled_attempt_for_running_steps() -> None:
    run = chain_run()
    d = run.send(Cancel(), at=5.0)
    assert sorted(aborted(d)) == ["a", "d"]
    assert sorted((x.step, x.attempt, x.status, x.finished_at) for x in d.attempts) == [
        ("a", 1, CANCELLED, 5.0),
        ("d", 1, CANCELLED, 5.0),
    ]
    assert all(
        x.error == {"kind": "cancelled", "message": "cancelled by request"} for x in d.attempts
    )
    assert run.state.info.error == {"kind": "cancelled", "message": "cancelled by request"}


def test_cancel_of_a_pending_run() -> None:
    run = Run(build({"a": http()}))
    d = run.send(Cancel())
    assert run.run_status == CANCELLED
    assert run.status("a") == CANCELLED
    assert aborted(d) == []
    assert finished(d) == [CANCELLED]


def test_cancel_of_a_finished_run_is_ignored() -> None:
    run = Run(build({"a": http()}))
    run.start()
    run.ok("a")
    d = run.send(Cancel())
    assert d.empty
    assert d.effects == []
    assert run.run_status == SUCCEEDED


def test_answers_after_cancel_are_ignored() -> None:
    run = chain_run()
    run.send(Cancel())
    d = run.done("d", "late", attempt=1)
    assert d.empty
    assert run.status("d") == CANCELLED


# -- timeout ----------------------------------------------------------------------------------------


def test_timeout_fails_the_run_with_kind_timeout() -> None:
    run = chain_run(timeout="30s")
    assert run.state.info.deadline == 30.0
    run.ok("d", at=1.0)
    d = run.send(Timeout(), at=30.0)
    info = run.state.info
    assert info.status == FAILED
    assert info.error == {"kind": "timeout", "message": "the run exceeded its timeout of 30s"}
    assert info.finished_at == 30.0
    assert sorted(aborted(d)) == ["a"]
    assert {run.status(n) for n in ("a", "b", "c")} == {CANCELLED}
    assert run.step("a").reason == "run timed out"
    assert run.status("d") == SUCCEEDED
    assert finished(d) == [FAILED]
    assert [(x.step, x.status) for x in d.attempts] == [("a", CANCELLED)]


def test_timeout_after_the_run_ended_is_ignored() -> None:
    run = Run(build({"a": http()}, timeout="1m"))
    run.start()
    run.ok("a")
    d = run.send(Timeout())
    assert d.empty and d.effects == []
    assert run.run_status == SUCCEEDED


# -- retry of a run ------------------------------------------------------------------------------------


def failed_chain() -> Run:
    run = chain_run()
    run.ok("a", {"v": 1}, at=1.0)
    run.ok("d", "D", at=1.0)
    run.fail("b", "4xx", "answered 400", at=2.0)
    assert run.run_status == FAILED
    assert run.status("c") == SKIPPED
    return run


def test_retry_resets_only_unsucceeded_steps_and_redispatches_the_failed_one() -> None:
    run = failed_chain()
    a_before, d_before = run.step("a"), run.step("d")
    d = run.send(Retry(), at=50.0)
    info = run.state.info
    assert info.status == RUNNING
    assert (info.error, info.output, info.finished_at) == (None, None, None)
    assert executed(d) == ["b"]
    (e,) = executes(d)
    assert e.attempt == 2
    assert e.request["json"] == {"from_a": {"v": 1}}  # a keeps its output
    assert "a" not in d.steps and "d" not in d.steps
    assert run.step("a") == a_before
    assert run.step("d") == d_before
    b = run.step("b")
    assert (b.status, b.attempt, b.tries, b.started_at, b.error) == (RUNNING, 2, 1, 50.0, None)
    assert run.status("c") == PENDING
    assert finished(d) == []
    assert executed(run.ok("b", at=51.0)) == ["c"]
    d = run.ok("c", at=52.0)
    assert run.run_status == SUCCEEDED
    assert finished(d) == [SUCCEEDED]
    assert run.state.info.output == {
        "c": {"status": 200, "body": None},
        "d": {"status": 200, "body": "D"},
    }


def test_retry_gives_a_fresh_retry_budget() -> None:
    run = chain_run()
    for t in (1.0, 20.0):
        run.fail("a", "5xx", at=t)
        run.send(Wake("a"), at=t + 10)
    run.fail("a", "5xx", at=40.0)
    run.ok("d", at=41.0)
    assert run.status("a") == FAILED
    assert run.step("a").attempt == 3
    run.send(Retry(), at=100.0)
    a = run.step("a")
    assert (a.status, a.attempt, a.tries) == (RUNNING, 4, 1)
    d = run.fail("a", "5xx", at=101.0)
    assert run.status("a") == WAITING
    assert schedules(d) == [Schedule("a", 111.0)]


def test_retry_of_a_cancelled_run() -> None:
    run = chain_run()
    run.ok("a", {"v": 2}, at=1.0)
    run.send(Cancel(), at=2.0)
    assert {run.status(n) for n in ("b", "c", "d")} == {CANCELLED}
    d = run.send(Retry(), at=3.0)
    assert sorted(executed(d)) == ["b", "d"]
    assert {e.step: e.attempt for e in executes(d)} == {"b": 2, "d": 2}
    assert run.status("a") == SUCCEEDED
    assert run.status("c") == PENDING
    assert run.run_status == RUNNING


def test_retry_of_a_timed_out_run_sets_a_new_deadline() -> None:
    run = chain_run(timeout="30s")
    run.send(Timeout(), at=30.0)
    d = run.send(Retry(), at=100.0)
    assert d.run is not None
    assert d.run.deadline == 130.0
    assert d.run.status == RUNNING
    assert sorted(executed(d)) == ["a", "d"]


def test_retry_is_ignored_unless_failed_or_cancelled() -> None:
    pending = Run(build({"a": http()}))
    assert pending.send(Retry()).empty
    running = Run(build({"a": http()}))
    running.start()
    d = running.send(Retry())
    assert d.empty and d.effects == []
    running.ok("a")
    assert running.send(Retry()).empty


def test_retry_with_branch_keeps_the_choice_and_reruns_the_failed_target() -> None:
    run = Run(
        build(
            {
                "g": {
                    "branch": {
                        "cases": [{"when": "{{ input.big }}", "then": "big"}],
                        "otherwise": "small",
                    }
                },
                "big": http(),
                "small": http(),
                "after": http(depends_on=["big", "small"], trigger="none_failed"),
            }
        ),
        {"big": True},
    )
    run.start()
    run.fail("big", "4xx")
    assert run.run_status == FAILED
    assert run.status("after") == SKIPPED
    d = run.send(Retry())
    assert executed(d) == ["big"]
    assert run.status("g") == SUCCEEDED
    assert run.status("small") == SKIPPED
    assert run.step("small").reason == "branch_not_taken"
    assert executed(run.ok("big")) == ["after"]
    run.ok("after")
    assert run.run_status == SUCCEEDED


def test_retry_of_a_run_failed_by_a_fail_step_fails_again() -> None:
    run = Run(build({"f": {"fail": "always"}}))
    run.start()
    assert run.run_status == FAILED
    d = run.send(Retry())
    assert run.run_status == FAILED
    assert run.step("f").attempt == 2
    assert finished(d) == [FAILED]


# -- resume -------------------------------------------------------------------------------------------


def test_resume_reemits_execute_for_running_and_schedule_for_waiting() -> None:
    run = chain_run()
    run.fail("a", "5xx", at=1.0)  # waits until 11
    stored = run.step("d").request
    d = run.send(Resume(), at=5.0)
    assert d.empty  # no state change, only effects
    (e,) = executes(d)
    assert (e.step, e.attempt, e.request) == ("d", 1, stored)
    assert e.timeout is None
    assert schedules(d) == [Schedule("a", 11.0)]
    assert finished(d) == []


def test_resume_uses_the_stored_request_not_a_new_render() -> None:
    run = chain_run()
    run.state.steps["d"] = StepState(
        "d",
        RUNNING,
        attempt=3,
        tries=1,
        started_at=0.0,
        request={"method": "GET", "url": "http://stored.test/"},
    )
    d = run.send(Resume())
    (e,) = [x for x in executes(d) if x.step == "d"]
    assert e.attempt == 3
    assert e.request == {"method": "GET", "url": "http://stored.test/"}


def test_resume_of_a_run_that_is_not_running_does_nothing() -> None:
    run = Run(build({"a": http()}))
    d = run.send(Resume())
    assert d.empty and d.effects == []
    run.start()
    run.ok("a")
    d = run.send(Resume())
    assert d.empty and d.effects == []


def test_resume_skips_pending_and_finished_steps() -> None:
    run = chain_run()
    run.ok("d", at=1.0)
    d = run.send(Resume())
    assert executed(d) == ["a"]
    assert schedules(d) == []
