"""Sub-workflow steps: start a child run with an id fixed by the attempt, and end with its result."""

from __future__ import annotations

from legato.engine.ids import child_run_id
from legato.engine.state import Cancel, ChildDone, Resume, StartChild
from tests.unit.decider_support import Run, aborted, build, executed

URL = "http://svc.test/"


def parent(**step: object) -> Run:
    wf = build(
        {
            "invoice": {
                "workflow": {"name": "make-invoice", "input": {"order": "{{ input.id }}"}},
                **step,
            },
            "mail": {"http": {"url": URL}, "depends_on": "invoice"},
        },
        inputs=[{"name": "id", "type": "string"}],
    )
    run = Run(wf, {"id": "A-1"})
    run.start()
    return run


def starts(run: Run) -> list[StartChild]:
    return [e for e in run.last.effects if isinstance(e, StartChild)]


def test_the_step_starts_its_child_and_takes_its_output() -> None:
    run = parent()
    child = child_run_id("run-1", "invoice", 1, 100.0)
    assert starts(run) == [StartChild("invoice", 1, child, "make-invoice", None, {"order": "A-1"})]
    step = run.step("invoice")
    assert (step.status, step.reason) == ("waiting", "child")
    assert step.request == {
        "workflow": "make-invoice",
        "version": None,
        "input": {"order": "A-1"},
        "run_id": child,
    }
    d = run.send(ChildDone("invoice", 1, True, {"number": "INV-1"}))
    assert run.status("invoice") == "succeeded" and run.step("invoice").output == {
        "number": "INV-1"
    }
    assert executed(d) == ["mail"]


def test_a_failed_child_fails_the_step_and_retries_start_a_new_child() -> None:
    run = parent(retry={"retries": 1, "delay": 1, "jitter": False, "on": ["child"]})
    first = starts(run)[0].run_id
    run.send(ChildDone("invoice", 1, False, None, {"kind": "child", "message": "failed"}))
    assert run.status("invoice") == "waiting" and run.step("invoice").reason is None
    from legato.engine.state import Wake

    run.send(Wake("invoice"), at=101.0)
    assert run.status("invoice") == "waiting" and run.step("invoice").reason == "child"
    second = starts(run)[0].run_id
    assert second != first and second == child_run_id("run-1", "invoice", 2, 101.0)


def test_child_ids_are_time_ordered_and_fixed_per_attempt() -> None:
    a = child_run_id("p", "s", 1, 1000.0)
    assert a == child_run_id("p", "s", 1, 1000.0) and len(a) == 32
    assert child_run_id("p", "s", 2, 1000.0) != a
    assert child_run_id("p", "s", 1, 2000.0) > a


def test_resume_starts_the_same_child_again_and_cancel_aborts_it() -> None:
    run = parent()
    first = starts(run)
    d = run.send(Resume())
    assert [e for e in d.effects if isinstance(e, StartChild)] == first
    d = run.send(Cancel("stop"))
    assert aborted(d) == ["invoice"] and run.status("invoice") == "cancelled"
    assert run.send(ChildDone("invoice", 1, True, {})).empty
