"""The decider's happy paths and joins: dispatch, readiness, trigger rules, branches, fail steps, output."""

from __future__ import annotations

from typing import Any

from legato.engine.state import (
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Attempt,
    Execute,
    Finished,
    Start,
    StepDone,
    Wake,
)
from legato.formats import load_definition
from legato.model.workflow import HttpCall, PythonCall
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


def test_start_dispatches_roots_with_rendered_requests() -> None:
    wf = load_definition(
        {
            "name": "w",
            "steps": {
                "a": {
                    "http": {
                        "service": "stock",
                        "path": "/items/{{ input.id }}",
                        "query": {"q": "{{ input.n }}"},
                        "json": {"id": "{{ input.id }}", "items": "{{ input.items }}"},
                    }
                },
                "b": {
                    "python": {"function": "mod:fn", "args": {"n": "{{ input.n + 1 }}"}},
                    "timeout": "3s",
                },
                "c": http(depends_on=["a", "b"]),
            },
        }
    ).workflow
    run = Run(wf, {"id": "o-1", "n": 2, "items": [1, 2]}, now=50.0)
    d = run.start()
    assert d.run is not None
    assert d.run.status == RUNNING
    assert d.run.started_at == 50.0
    assert d.run.deadline is None
    assert executed(d) == ["a", "b"]
    ea, eb = executes(d)
    a_action, b_action = wf.steps["a"].action, wf.steps["b"].action
    assert isinstance(a_action, HttpCall)
    assert isinstance(b_action, PythonCall)
    request = {
        "method": "POST",
        "service": "stock",
        "path": "/items/o-1",
        "query": {"q": "2"},
        "json": {"id": "o-1", "items": [1, 2]},
    }
    assert ea == Execute("a", 1, a_action, request, None)
    assert eb.action is b_action
    assert eb.request == {"function": "mod:fn", "args": {"n": 3}}
    assert eb.timeout == 3.0
    assert eb.attempt == 1
    a = run.step("a")
    assert (a.status, a.attempt, a.tries, a.started_at) == (RUNNING, 1, 1, 50.0)
    assert a.request == ea.request
    assert run.status("c") == PENDING
    assert "c" not in d.steps
    assert finished(d) == []


def test_start_sets_deadline_from_workflow_timeout() -> None:
    run = Run(build({"a": http()}, timeout="1m"), now=10.0)
    d = run.start()
    assert d.run is not None and d.run.deadline == 70.0


def test_start_is_ignored_when_the_run_is_not_pending() -> None:
    run = Run(build({"a": http()}))
    run.start()
    d = run.send(Start())
    assert d.empty
    assert d.effects == []


def test_downstream_ready_only_after_all_deps_succeed() -> None:
    run = Run(build({"a": http(), "b": http(), "c": http(depends_on=["a", "b"])}))
    run.start()
    d = run.ok("a", {"x": 1})
    assert executed(d) == []
    assert run.status("c") == PENDING
    d = run.ok("b")
    assert executed(d) == ["c"]
    assert run.status("c") == RUNNING
    d = run.ok("c", "done")
    assert run.run_status == SUCCEEDED
    assert finished(d) == [SUCCEEDED]


def test_downstream_request_renders_upstream_output() -> None:
    run = Run(
        build(
            {
                "a": http(),
                "b": {
                    "http": {
                        "url": "http://svc.test/",
                        "json": {
                            "got": "{{ steps.a.output.body.x }}",
                            "st": "{{ steps.a.status }}",
                        },
                    },
                    "depends_on": "a",
                },
            }
        )
    )
    run.start()
    d = run.ok("a", {"x": 41})
    (e,) = executes(d)
    assert e.request["json"] == {"got": 41, "st": "succeeded"}


def test_fan_out_and_join() -> None:
    run = Run(
        build(
            {
                "a": http(),
                "b": http(depends_on="a"),
                "c": http(depends_on="a"),
                "d": http(depends_on="a"),
                "join": http(depends_on=["b", "c", "d"]),
            }
        )
    )
    assert executed(run.start()) == ["a"]
    assert sorted(executed(run.ok("a"))) == ["b", "c", "d"]
    assert executed(run.ok("c")) == []
    assert executed(run.ok("b")) == []
    assert executed(run.ok("d")) == ["join"]
    run.ok("join")
    assert run.run_status == SUCCEEDED


def test_failed_step_skips_downstream_and_fails_run_naming_the_step() -> None:
    run = Run(build({"a": http(), "b": http(depends_on="a"), "c": http(depends_on="b")}))
    run.start()
    d = run.fail("a", "4xx", "a answered 404")
    assert run.status("a") == FAILED
    assert run.step("b").status == SKIPPED
    assert run.step("b").reason == "upstream_failed"
    assert run.step("c").status == SKIPPED
    assert run.step("c").reason == "upstream_skipped"
    assert run.run_status == FAILED
    assert run.state.info.error == {
        "kind": "step_failed",
        "step": "a",
        "message": "step 'a' failed: a answered 404",
    }
    assert finished(d) == [FAILED]


def test_run_waits_for_running_steps_before_failing() -> None:
    run = Run(build({"a": http(), "b": http()}))
    run.start()
    d = run.fail("a", "4xx")
    assert run.run_status == RUNNING
    assert finished(d) == []
    d = run.ok("b")
    assert run.run_status == FAILED
    assert finished(d) == [FAILED]


def test_failure_without_error_counts_as_exception() -> None:
    run = Run(build({"a": http(retry=3)}))
    run.start()
    d = run.done("a", None, ok=False, error=None)
    assert run.status("a") == FAILED
    assert run.step("a").error == {"kind": "exception"}
    assert schedules(d) == []


# -- trigger rules -------------------------------------------------------------------------------------


def trigger_run(trigger: str) -> Run:
    run = Run(build({"a": http(), "b": http(), "j": http(depends_on=["a", "b"], trigger=trigger)}))
    run.start()
    return run


def test_all_succeeded_skips_on_a_failure() -> None:
    run = trigger_run("all_succeeded")
    run.fail("a", "4xx")
    assert run.status("j") == SKIPPED
    assert run.step("j").reason == "upstream_failed"


def test_all_done_runs_after_a_failure_once_everything_finished() -> None:
    run = trigger_run("all_done")
    assert executed(run.fail("a", "4xx")) == []
    assert run.status("j") == PENDING
    assert executed(run.ok("b")) == ["j"]
    run.ok("j")
    assert run.run_status == FAILED  # a still failed the run
    assert run.state.info.error is not None and run.state.info.error["step"] == "a"


def test_one_succeeded_runs_as_soon_as_one_succeeds() -> None:
    run = trigger_run("one_succeeded")
    assert executed(run.ok("b")) == ["j"]
    assert run.status("a") == RUNNING
    d = run.ok("a")
    assert executed(d) == []  # not run twice
    run.ok("j")
    assert run.run_status == SUCCEEDED


def test_one_succeeded_waits_through_a_failure_then_runs() -> None:
    run = trigger_run("one_succeeded")
    assert executed(run.fail("a", "4xx")) == []
    assert run.status("j") == PENDING
    assert executed(run.ok("b")) == ["j"]


def test_one_succeeded_skips_when_all_failed() -> None:
    run = trigger_run("one_succeeded")
    run.fail("a", "4xx")
    run.fail("b", "4xx")
    assert run.status("j") == SKIPPED
    assert run.step("j").reason == "upstream_failed"
    assert run.run_status == FAILED


def test_none_failed_skips_on_a_failure() -> None:
    run = trigger_run("none_failed")
    run.ok("a")
    assert run.status("j") == PENDING
    run.fail("b", "4xx")
    assert run.status("j") == SKIPPED
    assert run.step("j").reason == "upstream_failed"


def test_none_failed_runs_when_all_succeeded() -> None:
    run = trigger_run("none_failed")
    run.ok("a")
    assert executed(run.ok("b")) == ["j"]


def test_none_failed_runs_when_some_skipped() -> None:
    run = Run(
        build(
            {
                "a": http(),
                "bad": http(),
                "s": http(depends_on="bad", optional=True),  # skipped because bad fails
                "j": http(depends_on=["a", "s"], trigger="none_failed"),
            }
        )
    )
    run.start()
    run.fail("bad", "4xx")
    assert run.status("s") == SKIPPED
    assert executed(run.ok("a")) == ["j"]


def test_none_failed_skips_when_every_dependency_skipped() -> None:
    run = Run(
        build(
            {
                "bad": http(),
                "s1": http(depends_on="bad"),
                "s2": http(depends_on="bad"),
                "j": http(depends_on=["s1", "s2"], trigger="none_failed"),
            }
        )
    )
    run.start()
    run.fail("bad", "4xx")
    assert run.status("j") == SKIPPED
    assert run.step("j").reason == "upstream_skipped"


def test_all_done_runs_even_when_all_dependencies_skipped() -> None:
    run = Run(
        build(
            {
                "bad": http(optional=True),
                "s": http(depends_on="bad"),
                "cleanup": http(depends_on="s", trigger="all_done"),
            }
        )
    )
    run.start()
    d = run.fail("bad", "4xx")
    assert executed(d) == ["cleanup"]
    run.ok("cleanup")
    assert run.run_status == SUCCEEDED


# -- branches ------------------------------------------------------------------------------------------


def branch_wf() -> Any:
    return build(
        {
            "check": http(),
            "route": {
                "depends_on": "check",
                "branch": {
                    "cases": [
                        {"when": "{{ steps.check.output.body.n > 10 }}", "then": ["big"]},
                        {"when": "{{ steps.check.output.body.n > 0 }}", "then": ["small", "log"]},
                    ],
                    "otherwise": ["zero"],
                },
            },
            "big": http(),
            "small": http(),
            "log": http(),
            "zero": http(),
            "after_small": http(depends_on="small"),
            "join_nf": http(depends_on=["big", "small", "zero"], trigger="none_failed"),
            "join_one": http(depends_on=["big", "small", "zero"], trigger="one_succeeded"),
            "join_all": http(depends_on=["big", "small", "zero"]),
        }
    )


def test_branch_picks_first_truthy_case_and_skips_the_rest() -> None:
    run = Run(branch_wf())
    run.start()
    d = run.ok("check", {"n": 50})  # both cases hold: the first wins
    assert run.status("route") == SUCCEEDED
    assert run.step("route").output == {"next": ["big"]}
    assert executed(d) == ["big"]
    for name in ("small", "log", "zero"):
        assert run.status(name) == SKIPPED
        assert run.step(name).reason == "branch_not_taken"
    assert run.status("after_small") == SKIPPED
    assert run.step("after_small").reason == "upstream_skipped"
    assert run.status("join_all") == SKIPPED
    d = run.ok("big")
    assert sorted(executed(d)) == ["join_nf", "join_one"]
    run.ok("join_nf")
    run.ok("join_one")
    assert run.run_status == SUCCEEDED


def test_branch_second_case() -> None:
    run = Run(branch_wf())
    run.start()
    d = run.ok("check", {"n": 3})
    assert executed(d) == ["small", "log"]
    assert run.status("big") == SKIPPED
    assert run.status("zero") == SKIPPED


def test_branch_otherwise() -> None:
    run = Run(branch_wf())
    run.start()
    d = run.ok("check", {"n": 0})
    assert run.step("route").output == {"next": ["zero"]}
    assert executed(d) == ["zero"]
    assert {run.step(n).reason for n in ("big", "small", "log")} == {"branch_not_taken"}


def test_branch_without_otherwise_skips_every_target() -> None:
    run = Run(
        build({"g": {"branch": {"cases": [{"when": "{{ input.go }}", "then": "x"}]}}, "x": http()}),
        {"go": False},
    )
    d = run.start()
    assert run.step("g").output == {"next": []}
    assert run.status("x") == SKIPPED
    assert run.run_status == SUCCEEDED
    assert finished(d) == [SUCCEEDED]


def test_branch_string_condition_false() -> None:
    run = Run(
        build(
            {
                "g": {
                    "branch": {
                        "cases": [{"when": "{{ input.flag }}", "then": "x"}],
                        "otherwise": "y",
                    }
                },
                "x": http(),
                "y": http(),
            }
        ),
        {"flag": "false"},
    )
    assert executed(run.start()) == ["y"]


def test_branch_condition_template_error_fails_the_branch() -> None:
    run = Run(
        build(
            {
                "g": {"branch": {"cases": [{"when": "{{ input.missing > 1 }}", "then": "x"}]}},
                "x": http(),
            }
        )
    )
    run.start()
    assert run.status("g") == FAILED
    err = run.step("g").error
    assert err is not None and err["kind"] == "template"
    assert run.status("x") == SKIPPED
    assert run.step("x").reason == "upstream_failed"
    assert run.run_status == FAILED


def test_step_depending_on_branch_but_not_a_target_runs_after_it() -> None:
    run = Run(
        build(
            {
                "g": {"branch": {"cases": [{"when": "{{ true }}", "then": "x"}]}},
                "x": http(),
                "audit": http(depends_on="g"),
            }
        )
    )
    d = run.start()
    assert sorted(executed(d)) == ["audit", "x"]


def test_untaken_branch_target_with_all_done_trigger_is_skipped() -> None:
    run = Run(
        build(
            {
                "g": {
                    "branch": {"cases": [{"when": "{{ false }}", "then": "x"}], "otherwise": "y"}
                },
                "x": http(trigger="all_done"),
                "y": http(),
            }
        )
    )
    d = run.start()
    assert executed(d) == ["y"]
    assert run.status("x") == SKIPPED
    assert run.step("x").reason == "branch_not_taken"


def test_untaken_branch_target_with_one_succeeded_trigger_is_skipped() -> None:
    run = Run(
        build(
            {
                "a": http(),
                "g": {"branch": {"cases": [{"when": "{{ false }}", "then": "x"}]}},
                "x": http(depends_on="a", trigger="one_succeeded"),
            }
        )
    )
    run.start()
    assert run.status("x") == SKIPPED
    d = run.ok("a")
    assert executed(d) == []


# -- fail steps ------------------------------------------------------------------------------------------


def test_fail_step_fails_the_run_with_its_rendered_message() -> None:
    run = Run(
        build(
            {
                "check": http(),
                "refuse": {
                    "depends_on": "check",
                    "fail": "order {{ input.id }} refused: {{ steps.check.output.body.why }}",
                },
            }
        ),
        {"id": "o-9"},
    )
    run.start()
    d = run.ok("check", {"why": "no stock"})
    assert run.status("refuse") == FAILED
    assert run.step("refuse").error == {"kind": "fail", "message": "order o-9 refused: no stock"}
    assert run.run_status == FAILED
    assert run.state.info.error == {
        "kind": "step_failed",
        "step": "refuse",
        "message": "step 'refuse' failed: order o-9 refused: no stock",
    }
    assert finished(d) == [FAILED]
    assert [a.status for a in d.attempts if a.step == "refuse"] == [FAILED]


def test_fail_step_message_that_cannot_render_still_fails() -> None:
    run = Run(build({"f": {"fail": "bad {{ input.nope }}"}}))
    run.start()
    err = run.step("f").error
    assert err is not None and err["kind"] == "fail"
    assert err["message"].startswith("(message failed to render:")
    assert run.run_status == FAILED


def test_fail_step_on_untaken_branch_is_skipped() -> None:
    run = Run(
        build(
            {
                "g": {
                    "branch": {
                        "cases": [{"when": "{{ input.ok }}", "then": "go"}],
                        "otherwise": "stop",
                    }
                },
                "go": http(),
                "stop": {"fail": "stopped"},
            }
        ),
        {"ok": True},
    )
    run.start()
    assert run.status("stop") == SKIPPED
    run.ok("go")
    assert run.run_status == SUCCEEDED


# -- optional steps, output --------------------------------------------------------------------------


def test_optional_step_failure_does_not_fail_the_run() -> None:
    run = Run(build({"a": http(), "extra": http(optional=True)}))
    run.start()
    run.fail("extra", "4xx")
    run.ok("a", {"v": 1})
    assert run.status("extra") == FAILED
    assert run.run_status == SUCCEEDED
    assert run.state.info.error is None
    assert run.state.info.output == {"a": {"status": 200, "body": {"v": 1}}}


def test_default_output_is_leaf_outputs_of_succeeded_leaves() -> None:
    run = Run(
        build(
            {
                "a": http(),
                "b": http(depends_on="a"),
                "c": http(depends_on="a"),
                "d": http(optional=True),
            }
        )
    )
    run.start()
    run.ok("a", 1)
    run.fail("d", "4xx")
    run.ok("b", 2)
    d = run.ok("c", 3)
    assert run.state.info.output == {
        "b": {"status": 200, "body": 2},
        "c": {"status": 200, "body": 3},
    }
    assert d.run is not None and d.run.finished_at == run.now


def test_run_output_template_rendered_at_the_end() -> None:
    run = Run(
        build(
            {"a": http(), "b": http(depends_on="a")},
            output={
                "total": "{{ steps.a.output.body.n + steps.b.output.body.n }}",
                "who": "{{ input.who }}",
                "run": "{{ run.workflow }}",
            },
        ),
        {"who": "me"},
    )
    run.start()
    run.ok("a", {"n": 1})
    assert run.state.info.output is None
    run.ok("b", {"n": 2})
    assert run.run_status == SUCCEEDED
    assert run.state.info.output == {"total": 3, "who": "me", "run": "w"}


def test_run_output_template_error_fails_the_run() -> None:
    run = Run(build({"a": http()}, output="{{ steps.a.output.body.missing }}"))
    run.start()
    d = run.ok("a", {})
    assert run.run_status == FAILED
    err = run.state.info.error
    assert err is not None and err["kind"] == "output"
    assert err["message"].startswith("output: ")
    assert finished(d) == [FAILED]


def test_declared_outputs_checked() -> None:
    wf = build(
        {"a": http()},
        output="{{ steps.a.output.body }}",
        outputs=[{"name": "n", "type": "integer"}],
    )
    good = Run(wf)
    good.start()
    good.ok("a", {"n": 3, "extra": True})
    assert good.run_status == SUCCEEDED
    assert good.state.info.output == {"n": 3, "extra": True}

    bad = Run(wf)
    bad.start()
    bad.ok("a", {"n": "three"})
    assert bad.run_status == FAILED
    assert bad.state.info.error == {
        "kind": "output",
        "message": "output.n: must be an integer, got string",
    }
    assert bad.state.info.output == {"n": "three"}

    missing = Run(wf)
    missing.start()
    missing.ok("a", {})
    assert missing.run_status == FAILED
    assert missing.state.info.error == {
        "kind": "output",
        "message": "output.n: is required (integer)",
    }


def test_declared_outputs_need_an_object() -> None:
    run = Run(build({"a": http()}, output="{{ steps.a.output.body }}", outputs={"n": "integer"}))
    run.start()
    run.ok("a", [1, 2])
    assert run.run_status == FAILED
    assert run.state.info.error == {"kind": "output", "message": "output: must be a JSON object"}


# -- attempts, stale answers ------------------------------------------------------------------------


def test_attempt_records_for_each_failed_attempt() -> None:
    # A failed (or cancelled) attempt is emitted as an Attempt; a succeeded attempt is the step's own row.
    run = Run(
        build(
            {
                "a": http(retry={"retries": 1, "delay": 1, "jitter": False}),
                "b": http(depends_on="a"),
            }
        ),
        now=0.0,
    )
    d0 = run.start()
    assert d0.attempts == []
    request = run.step("a").request
    d1 = run.fail("a", "5xx", "a answered 503", output={"status": 503}, at=1.0)
    assert d1.attempts == [
        Attempt(
            "run-1",
            "a",
            1,
            FAILED,
            0.0,
            1.0,
            request,
            {"status": 503},
            {"kind": "5xx", "message": "a answered 503"},
        )
    ]
    run.send(Wake("a"), at=2.0)
    d2 = run.ok("a", "fine", at=3.0)
    assert d2.attempts == []
    a = run.step("a")
    assert (a.status, a.attempt, a.started_at, a.finished_at) == (SUCCEEDED, 2, 2.0, 3.0)
    assert a.output == {"status": 200, "body": "fine"}
    assert a.error is None
    d3 = run.fail("b", "4xx", at=4.0)
    assert [(x.step, x.attempt, x.status) for x in d3.attempts] == [("b", 1, FAILED)]


def test_template_failure_at_dispatch_records_an_attempt() -> None:
    run = Run(
        build({"a": {"http": {"url": "http://svc.test/", "json": "{{ input.missing }}"}}}), now=5.0
    )
    d = run.start()
    assert [(x.step, x.attempt, x.status, x.started_at, x.finished_at) for x in d.attempts] == [
        ("a", 1, FAILED, 5.0, 5.0)
    ]
    assert d.attempts[0].error is not None and d.attempts[0].error["kind"] == "template"


def test_failing_inline_steps_record_attempts() -> None:
    run = Run(build({"g": {"branch": {"otherwise": "f"}}, "f": {"fail": "x"}}))
    d = run.start()
    assert [(a.step, a.attempt, a.status) for a in d.attempts] == [("f", 1, FAILED)]
    assert (run.step("g").status, run.step("g").attempt) == (SUCCEEDED, 1)


def test_stale_step_done_with_wrong_attempt_is_ignored() -> None:
    run = Run(build({"a": http(), "b": http(depends_on="a")}))
    run.start()
    before = dict(run.state.steps)
    d = run.done("a", "late", attempt=7)
    assert d.empty
    assert d.effects == []
    assert run.state.steps == before
    assert run.status("a") == RUNNING


def test_step_done_for_a_step_that_is_not_running_is_ignored() -> None:
    run = Run(build({"a": http(), "b": http(depends_on="a")}))
    run.start()
    d = run.send(StepDone("b", 0, True, None, None, 0.0, 0.0))
    assert d.empty
    run.ok("a")
    run.ok("b")
    again = run.done("b", "dup")
    assert again.empty
    assert again.effects == []


def test_step_done_after_run_finished_is_ignored() -> None:
    run = Run(build({"a": http(), "b": http()}))
    run.start()
    run.ok("a")
    run.ok("b")
    assert run.run_status == SUCCEEDED
    d = run.send(StepDone("a", 1, False, None, {"kind": "5xx"}, 0.0, 0.0))
    assert d.empty


def test_every_decision_with_a_finish_has_exactly_one_finished_effect() -> None:
    run = Run(build({"a": http()}))
    run.start()
    d = run.ok("a")
    assert [e for e in d.effects if isinstance(e, Finished)] == [Finished(SUCCEEDED)]
    assert aborted(d) == []


def test_execute_action_is_the_steps_action() -> None:
    wf = build({"a": http("/p")})
    run = Run(wf)
    (e,) = executes(run.start())
    assert isinstance(e.action, HttpCall)
    assert e.action is wf.steps["a"].action
    assert e.request == {"method": "GET", "url": "http://svc.test/", "path": "/p"}


def test_decision_empty_property() -> None:
    run = Run(build({"a": http()}))
    assert not run.start().empty
    assert run.done("a", None, attempt=9).empty
