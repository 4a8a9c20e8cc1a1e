"""Map steps: one child per item, bounded concurrency, ordered outputs, fail-fast with sibling cancel."""

from __future__ import annotations

from typing import Any

from legato.engine.decider import child_name, split_child
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
    Wake,
)
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


def map_run(items: Any, concurrency: int = 2, retry: Any = None, **top: Any) -> Run:
    step: dict[str, Any] = {
        "map": {
            "over": "{{ input.items }}",
            "concurrency": concurrency,
            "step": {
                "http": {
                    "url": "http://svc.test/",
                    "json": {"v": "{{ item }}", "i": "{{ index }}", "o": "{{ input.order }}"},
                }
            },
        }
    }
    if retry is not None:
        step["retry"] = retry
    run = Run(
        build(
            {
                "m": step,
                "after": {
                    "http": {"url": "http://svc.test/", "json": "{{ steps.m.output }}"},
                    "depends_on": "m",
                },
            },
            **top,
        ),
        {"items": items, "order": "o1"},
        now=0.0,
    )
    return run


def test_child_names() -> None:
    assert child_name("m", 3) == "m[3]"
    assert split_child("m[3]") == ("m", 3)
    assert split_child("m") is None


def test_map_dispatches_children_up_to_concurrency_with_item_and_index() -> None:
    run = map_run(["a", "b", "c"], concurrency=2)
    d = run.start()
    assert executed(d) == ["m[0]", "m[1]"]
    e0, e1 = executes(d)
    assert e0.request == {
        "method": "POST",
        "url": "http://svc.test/",
        "json": {"v": "a", "i": 0, "o": "o1"},
    }
    assert e1.request["json"] == {"v": "b", "i": 1, "o": "o1"}
    assert e0.attempt == e1.attempt == 1
    assert isinstance(e0.action, HttpCall)
    m = run.step("m")
    assert m.status == RUNNING
    assert m.request == {"items": ["a", "b", "c"]}
    assert m.attempt == 1
    assert run.status("m[2]") == PENDING
    assert "m[2]" in run.state.steps
    assert run.status("after") == PENDING


def test_map_respects_concurrency_as_children_finish() -> None:
    run = map_run(list(range(5)), concurrency=2)
    run.start()

    def running() -> list[str]:
        return sorted(n for n, s in run.state.steps.items() if "[" in n and s.status == RUNNING)

    assert running() == ["m[0]", "m[1]"]
    assert executed(run.ok("m[1]", "B")) == ["m[2]"]
    assert running() == ["m[0]", "m[2]"]
    assert executed(run.ok("m[0]", "A")) == ["m[3]"]
    assert executed(run.ok("m[3]", "D")) == ["m[4]"]
    assert executed(run.ok("m[4]", "E")) == []
    assert run.status("m") == RUNNING
    d = run.ok("m[2]", "C")
    assert run.status("m") == SUCCEEDED
    assert executed(d) == ["after"]


def test_map_collects_outputs_in_item_order() -> None:
    run = map_run(["x", "y", "z"], concurrency=3)
    run.start()
    run.done("m[2]", "Z")
    run.done("m[0]", "X")
    d = run.done("m[1]", "Y")
    assert run.step("m").output == ["X", "Y", "Z"]
    (e,) = executes(d)
    assert e.step == "after"
    assert e.request["json"] == ["X", "Y", "Z"]
    run.ok("after")
    assert run.run_status == SUCCEEDED


def test_map_concurrency_one_runs_serially() -> None:
    run = map_run([1, 2, 3], concurrency=1)
    assert executed(run.start()) == ["m[0]"]
    assert executed(run.done("m[0]", 1)) == ["m[1]"]
    assert executed(run.done("m[1]", 2)) == ["m[2]"]


def test_empty_list_succeeds_with_empty_output() -> None:
    run = map_run([])
    d = run.start()
    assert run.status("m") == SUCCEEDED
    assert run.step("m").output == []
    (e,) = executes(d)
    assert e.step == "after"
    assert e.request["json"] == []


def test_over_not_a_list_fails_the_map_with_kind_template() -> None:
    run = map_run({"not": "a list"})
    d = run.start()
    m = run.step("m")
    assert m.status == FAILED
    assert m.error == {"kind": "template", "message": "map.over must render to a list, got dict"}
    assert run.status("after") == SKIPPED
    assert run.run_status == FAILED
    assert finished(d) == [FAILED]


def test_one_child_failing_fails_the_map_and_cancels_siblings() -> None:
    run = map_run(["a", "b", "c", "d"], concurrency=3)
    run.start()
    run.done("m[0]", "A")
    d = run.fail("m[1]", "4xx", "answered 404")
    assert sorted(aborted(d)) == ["m[2]", "m[3]"]
    assert run.status("m[0]") == SUCCEEDED
    assert run.status("m[1]") == FAILED
    for name in ("m[2]", "m[3]"):
        assert run.status(name) == CANCELLED
        assert run.step(name).reason == "another item failed"
    m = run.step("m")
    assert m.status == FAILED
    assert m.error == {"kind": "4xx", "message": "item m[1] failed: answered 404"}
    assert run.status("after") == SKIPPED
    assert run.run_status == FAILED
    assert run.state.info.error == {
        "kind": "step_failed",
        "step": "m",
        "message": "step 'm' failed: item m[1] failed: answered 404",
    }


def test_sibling_abort_only_for_running_children() -> None:
    run = map_run(["a", "b", "c"], concurrency=2)
    run.start()
    d = run.fail("m[0]", "4xx")
    assert aborted(d) == ["m[1]"]  # m[2] was never started: cancelled without an Abort
    assert run.status("m[2]") == CANCELLED
    assert executed(d) == []


def test_sibling_cancelled_by_map_failure_records_a_cancelled_attempt() -> None:
    run = map_run(["a", "b"], concurrency=2)
    run.start()
    d = run.fail("m[0]", "4xx")
    assert [(a.step, a.status) for a in d.attempts] == [
        ("m[0]", FAILED),
        ("m[1]", CANCELLED),
        ("m", FAILED),
    ]


def test_failed_map_records_an_attempt() -> None:
    run = map_run(["a"], concurrency=1)
    run.start()
    d = run.fail("m[0]", "4xx")
    assert ("m", 1, FAILED) in [(a.step, a.attempt, a.status) for a in d.attempts]


def test_child_retry_uses_the_map_steps_policy() -> None:
    run = map_run(
        ["a", "b", "c"], concurrency=2, retry={"retries": 1, "delay": "1s", "jitter": False}
    )
    run.start()
    d = run.fail("m[0]", "5xx", at=1.0)
    assert run.status("m[0]") == WAITING
    assert schedules(d) == [Schedule("m[0]", 2.0)]
    assert executed(d) == []  # a waiting child still holds its slot
    d = run.send(Wake("m[0]"), at=2.0)
    (e,) = executes(d)
    assert (e.step, e.attempt) == ("m[0]", 2)
    assert e.request["json"] == {"v": "a", "i": 0, "o": "o1"}
    run.done("m[0]", "A", at=3.0)
    run.done("m[1]", "B", at=3.0)
    run.done("m[2]", "C", at=3.0)
    assert run.step("m").output == ["A", "B", "C"]


def test_child_template_error_fails_the_map() -> None:
    wf = build(
        {
            "m": {
                "map": {
                    "over": "{{ input.items }}",
                    "step": {"http": {"url": "http://svc.test/", "json": "{{ item.id }}"}},
                }
            }
        }
    )
    run = Run(wf, {"items": [{"id": 1}, {"no": 2}, {"id": 3}]})
    d = run.start()
    assert run.status("m[1]") == FAILED
    assert run.step("m[1]").error is not None
    assert run.step("m[1]").error["kind"] == "template"  # type: ignore[index]
    m = run.step("m")
    assert m.status == FAILED
    assert m.error is not None and m.error["kind"] == "template"
    assert m.error["message"].startswith("item m[1] failed: ")
    assert "m[0]" in aborted(d)
    assert run.run_status == FAILED


def test_map_over_python_function() -> None:
    wf = build(
        {
            "m": {
                "map": {
                    "over": "{{ [1, 2] }}",
                    "step": {"python": {"function": "mod:double", "args": {"x": "{{ item }}"}}},
                }
            }
        }
    )
    run = Run(wf)
    d = run.start()
    assert [e.request for e in executes(d)] == [
        {"function": "mod:double", "args": {"x": 1}},
        {"function": "mod:double", "args": {"x": 2}},
    ]
    assert all(isinstance(e.action, PythonCall) for e in executes(d))
    run.done("m[0]", 2)
    run.done("m[1]", 4)
    assert run.state.info.output == {"m": [2, 4]}


def test_map_step_timeout_applies_to_children() -> None:
    wf = build(
        {
            "m": {
                "map": {"over": "{{ [1] }}", "step": {"http": {"url": "http://svc.test/"}}},
                "timeout": "7s",
            }
        }
    )
    (e,) = executes(Run(wf).start())
    assert e.timeout == 7.0


def test_stale_child_answer_ignored() -> None:
    run = map_run(["a", "b"])
    run.start()
    d = run.done("m[0]", "A", attempt=5)
    assert d.empty
    assert run.status("m[0]") == RUNNING


def test_cancel_aborts_children_not_the_map() -> None:
    run = map_run(["a", "b", "c"], concurrency=2)
    run.start()
    d = run.send(Cancel("stop"))
    assert sorted(aborted(d)) == ["m[0]", "m[1]"]
    assert run.status("m") == CANCELLED
    assert {run.status(n) for n in ("m[0]", "m[1]", "m[2]", "after")} == {CANCELLED}
    assert finished(d) == [CANCELLED]
    assert sorted((a.step, a.status) for a in d.attempts) == [
        ("m[0]", CANCELLED),
        ("m[1]", CANCELLED),
    ]


def test_retry_of_failed_map_reruns_only_unfinished_children() -> None:
    run = map_run(["a", "b", "c"], concurrency=3)
    run.start()
    run.done("m[0]", "A")
    run.fail("m[1]", "4xx")
    assert run.run_status == FAILED
    assert run.status("m[2]") == CANCELLED
    d = run.send(Retry(), at=50.0)
    assert run.run_status == RUNNING
    assert sorted(executed(d)) == ["m[1]", "m[2]"]
    attempts = {e.step: e.attempt for e in executes(d)}
    assert attempts == {"m[1]": 2, "m[2]": 2}
    assert run.status("m[0]") == SUCCEEDED
    assert run.step("m").status == RUNNING
    assert run.step("m").attempt == 2
    run.done("m[1]", "B")
    run.done("m[2]", "C")
    assert run.step("m").output == ["A", "B", "C"]


def test_resume_reissues_running_children_without_new_dispatches() -> None:
    run = map_run(["a", "b", "c", "d"], concurrency=2)
    run.start()
    run.done("m[0]", "A")  # m[2] takes the free slot
    stored = {n: run.step(n).request for n in ("m[1]", "m[2]")}
    d = run.send(Resume())
    assert sorted((e.step, e.attempt) for e in executes(d)) == [("m[1]", 1), ("m[2]", 1)]
    assert {e.step: e.request for e in executes(d)} == stored
    assert run.status("m[3]") == PENDING
    assert d.empty  # nothing changes in the state


def test_resume_fills_a_free_map_slot() -> None:
    run = map_run(["a", "b", "c"], concurrency=2)
    run.start()
    # A state where m[1] is still pending although a slot is free (as if its dispatch was never made).
    run.state.steps["m[1]"] = StepState("m[1]", PENDING)
    d = run.send(Resume())
    assert sorted(executed(d)) == ["m[0]", "m[1]"]
    assert run.status("m[1]") == RUNNING
    assert run.status("m[2]") == PENDING


def test_map_output_usable_in_downstream_templates_and_run_output() -> None:
    wf = build(
        {
            "m": {
                "map": {"over": "{{ input.items }}", "step": {"http": {"url": "http://svc.test/"}}}
            },
            "n": {**http(), "depends_on": "m"},
        },
        output="{{ steps.m.output | map(attribute='body') | list }}",
    )
    run = Run(wf, {"items": [1, 2]})
    run.start()
    run.ok("m[0]", "one")
    run.ok("m[1]", "two")
    run.ok("n")
    assert run.state.info.output == ["one", "two"]


def test_a_map_over_too_many_items_fails_with_the_limit() -> None:
    from legato.engine.decider import MAX_MAP_ITEMS

    run = map_run(list(range(MAX_MAP_ITEMS + 1)), concurrency=2)
    run.start()
    m = run.step("m")
    assert m.status == "failed"
    assert m.error is not None and f"at most {MAX_MAP_ITEMS}" in m.error["message"]
