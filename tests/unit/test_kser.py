"""Kser compat, without an engine: Result's merge, the log lines, the workflows a registry builds,
and bad input refused with the name of what is wrong."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from legato.compat.kser import (
    Operation,
    OperationRegistry,
    Result,
    Task,
    TaskFailed,
    entrypoint_trigger,
    kser_status,
    workflow_name,
)
from legato.compat.kser.steps import build_operation, run_entry, run_task
from legato.errors import LegatoError


class Roll(Task):
    path = "__main__.Roll"

    def run(self) -> Result:
        return Result(uuid=self.uuid, stdout="You made a 1", retval={"roll": 1})


class Broken(Task):
    def run(self) -> Result:
        raise ValueError("dice fell off the table")


class Wrong(Task):
    def run(self) -> Any:
        return 42


def test_results_merge_along_the_chain() -> None:
    a = Result(uuid="op", stdout="one", retval={"x": 1, "y": 1})
    b = Result(retcode=2, stdout="two", stderr="bad", retval={"y": 2})
    c = Result(retcode=1, stderr="worse")
    merged = a + b + c
    assert merged.uuid == "op"
    assert merged.retcode == 2
    assert merged.stdout == "one\ntwo"
    assert merged.stderr == "bad\nworse"
    assert merged.retval == {"x": 1, "y": 2}
    assert a.retval == {"x": 1, "y": 1}  # operands are left as they were
    assert Result.from_dict(merged.to_dict()) == merged
    assert str(a) == "one" and str(merged) == "bad\nworse"


def test_result_from_dict_names_the_bad_field() -> None:
    with pytest.raises(LegatoError, match=r"result\.retcode: must be an integer"):
        Result.from_dict({"retcode": "1"})
    with pytest.raises(LegatoError, match=r"result\.retval: must be an object"):
        Result.from_dict({"retval": [1]})
    assert Result.from_dict({"stdout": "hi"}).retcode == 0


def test_the_log_lines_are_kser_s(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "legato.kser")
    uuid = "872c3be0-51ac-457f-a4d9-12c2f7667b80"
    out = run_entry("__main__.Roll", {"uuid": uuid}, "run-1")
    assert out["stdout"] == "You made a 1" and out["uuid"] == uuid
    assert caplog.messages == [
        f"Roll.Running: __main__.Roll[{uuid}]: started",
        f"Roll.Success: __main__.Roll[{uuid}]: You made a 1",
        f"Controller.Success: __main__.Roll[{uuid}]: You made a 1",  # the seed's consumer's line
    ]
    caplog.clear()
    task = Roll(uuid="t-1", status="RUNNING")
    task.log("rolling %s", logging.WARNING, "now")
    assert caplog.messages == ["Roll.RUNNING: __main__.Roll[t-1]: rolling now"]


def test_an_exception_or_a_wrong_return_is_a_failed_task(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "legato.kser")
    task = {"entrypoint": Broken.path, "uuid": "t-2", "params": {}, "metadata": {}}
    with pytest.raises(TaskFailed, match=r"ValueError: dice fell off the table \(retcode 1\)"):
        run_task(task, None, "m.Op", "op-1")
    assert caplog.messages[-3:] == [
        f"Broken.Failed: {Broken.path}[t-2]: ValueError: dice fell off the table",
        "Op.Failed: m.Op[op-1]: ValueError: dice fell off the table",
        "Controller.Failed: m.Op[op-1]: ValueError: dice fell off the table",
    ]
    task = {"entrypoint": Wrong.path, "uuid": "t-3"}
    with pytest.raises(TaskFailed, match=r"Wrong\.run: must return a Result, got int"):
        run_task(task, None)


class Later(Task):
    async def run(self) -> Result:
        return Result(uuid=self.uuid, stdout="awaited", retval={"n": self.params["n"]})


def test_an_async_run_and_required_params() -> None:
    task = {"entrypoint": Later.path, "uuid": "t-4", "params": {"n": 2}}
    out = run_task(task, Result(uuid="op", stdout="before").to_dict(), "m.Op", "op", last=True)
    assert out == {
        "uuid": "op",
        "retcode": 0,
        "stdout": "before\nawaited",
        "stderr": "",
        "retval": {"n": 2},
    }


def test_workflow_names_follow_the_entrypoint() -> None:
    assert workflow_name("__main__.DiceRoll") == "main.DiceRoll"
    assert workflow_name("shop.ops.Order") == "shop.ops.Order"
    with pytest.raises(LegatoError, match="entrypoint"):
        workflow_name("a." + "b" * 200)


def test_an_operation_is_a_build_step_then_one_step_per_task() -> None:
    reg = OperationRegistry(app=object())
    reg.init_app(object())
    assert reg.controller is reg

    @reg.subscribe
    class Launch(Operation):
        def build_tasks(self, **kwargs: Any) -> list[Task]:
            return [Roll(), Roll(params={"n": kwargs.get("n", 1)})]

    reg.subscribe(Roll)
    launch, roll = reg.workflows()
    assert launch.name == Launch.path and roll.name == "main.Roll"
    assert list(launch.steps) == ["build", "task1_Roll", "task2_Roll"]
    assert launch.steps["task2_Roll"].depends_on == ("task1_Roll",)
    assert list(roll.steps) == ["Roll"]
    namespace: dict[str, Any] = {}
    reg.export(namespace)
    assert set(namespace) == {"kser_Launch", "kser_Roll"}
    planned = build_operation(Launch.path, [Roll.path, Roll.path], {"params": {"n": 3}}, "r-1")
    assert planned["uuid"] == "r-1"
    assert [t["params"] for t in planned["tasks"]] == [{}, {"n": 3}]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ("roll", r"Bad\.build_tasks: must return a list of Task instances, got str"),
        ([Roll], r"Bad\.build_tasks: item 0 is the class Roll, not a task: write Roll\(\)"),
        ([Roll(), {"x": 1}], r"Bad\.build_tasks: item 1 must be a Task instance, got dict"),
    ],
)
def test_build_tasks_returning_something_else_is_refused(tasks: Any, message: str) -> None:
    reg = OperationRegistry()

    @reg.subscribe
    class Bad(Operation):
        def build_tasks(self, **kwargs: Any) -> Any:
            return tasks

    with pytest.raises(LegatoError, match=message):
        reg.workflows()


def test_an_operation_without_tasks_is_its_build_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "legato.kser")
    reg = OperationRegistry()

    @reg.subscribe
    class Nothing(Operation):
        pass

    (wf,) = reg.workflows()
    assert list(wf.steps) == ["build"]
    planned = build_operation(Nothing.path, [], {"uuid": "n-1", "result": {"stdout": "kept"}}, "r")
    assert planned["tasks"] == [] and planned["result"]["stdout"] == "kept"
    assert planned["result"]["uuid"] == "n-1"
    assert caplog.messages[-2:] == [
        f"Nothing.Success: {Nothing.path}[n-1]: kept",
        f"Controller.Success: {Nothing.path}[n-1]: kept",
    ]


def test_a_chain_that_changes_with_the_params_is_refused_at_run_time() -> None:
    reg = OperationRegistry()

    @reg.subscribe
    class Varying(Operation):
        def build_tasks(self, **kwargs: Any) -> list[Task]:
            return [Roll() for _ in range(int(kwargs.get("dice", 1)))]

    (wf,) = reg.workflows()
    assert list(wf.steps) == ["build", "task1_Roll"]
    with pytest.raises(LegatoError, match=r"Varying\.build_tasks: gave .* fixed at registration"):
        build_operation(Varying.path, [Roll.path], {"params": {"dice": 2}}, "r-2")

    @reg.subscribe
    class NeedsParams(Operation):
        def build_tasks(self, **kwargs: Any) -> list[Task]:
            return [Roll(params={"n": kwargs["n"]})]

    with pytest.raises(LegatoError, match=r"NeedsParams\.build_tasks: failed when called without"):
        reg.workflow(NeedsParams)


def test_bad_messages_name_the_field() -> None:
    with pytest.raises(LegatoError, match=r"^params: must be an object"):
        run_entry("__main__.Roll", {"params": [1]}, "r")
    with pytest.raises(LegatoError, match=r"^params\.self: is a reserved name"):
        run_entry("__main__.Roll", {"params": {"self": 1}}, "r")
    with pytest.raises(LegatoError, match=r"^entrypoint: is 'x\.Y'"):
        run_entry("__main__.Roll", {"entrypoint": "x.Y"}, "r")
    with pytest.raises(LegatoError, match=r"^entrypoint 'nowhere\.Gone' is not known"):
        run_entry("nowhere.Gone", {}, "r")
    with pytest.raises(LegatoError, match=r"^subscribe: takes a Task or Operation class"):
        OperationRegistry().subscribe(len)  # type: ignore[type-var]


def test_statuses_map_onto_kser_s() -> None:
    assert [kser_status(s) for s in ("pending", "running", "succeeded", "failed")] == [
        "PENDING",
        "RUNNING",
        "SUCCESS",
        "FAILED",
    ]


def test_a_trigger_has_one_destination() -> None:
    with pytest.raises(LegatoError, match="one of topic=, subject= or queue="):
        entrypoint_trigger("a.B", "bus", topic="t", subject="s")
    with pytest.raises(LegatoError, match="one of topic=, subject= or queue="):
        entrypoint_trigger("a.B", "bus", stream="s")


def test_each_entrypoint_gets_a_trigger_on_its_messages() -> None:
    reg = OperationRegistry()
    reg.subscribe(Roll)
    (wf,) = reg.workflows(transport="kafka", topic="kser")
    assert wf.spec["triggers"] == [entrypoint_trigger("__main__.Roll", "kafka", topic="kser")]
    (on_nats,) = reg.workflows(transport="bus", subject="jobs")
    assert on_nats.spec["triggers"][0]["subject"] == "jobs"
    assert entrypoint_trigger("__main__.Roll", "kafka") == {
        "transport": "kafka",
        "topic": "kser",
        "filter": "{{ message.entrypoint == '__main__.Roll' }}",
        "key": "{{ message.uuid }}",
        "input": "{{ message }}",
    }


def test_a_raised_exception_stays_the_cause_of_the_failure() -> None:
    """So the step's logs show its traceback (the cause chain of the step's error)."""
    task = {"entrypoint": Broken.path, "uuid": "t-5"}
    with pytest.raises(TaskFailed) as caught:
        run_task(task, None)
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.__cause__.__traceback__ is not None


class Dup(Task):
    def run(self) -> Result:
        return Result(stdout="first")


FIRST_DUP = Dup


class Dup(Task):  # type: ignore[no-redef]  # the same path, on purpose
    def run(self) -> Result:
        return Result(stdout="second")


def test_two_classes_with_one_entrypoint_path_are_refused() -> None:
    reg = OperationRegistry()
    reg.subscribe(FIRST_DUP)
    reg.subscribe(FIRST_DUP)  # the same class again is fine
    with pytest.raises(LegatoError) as caught:
        reg.subscribe(Dup)
    message = str(caught.value)
    assert message.startswith(f"subscribe: entrypoint '{Dup.path}' is already")
    assert message.count("tests.unit.test_kser.Dup (") == 2  # both, each with its file and line
    # the subscribed class is what a step with that path runs, not the one defined later
    assert run_entry(Dup.path, {}, "r")["stdout"] == "first"
    with pytest.raises(LegatoError, match=r"entrypoint '__main__\.Roll': is taken by .*Roll"):
        type("Other", (Task,), {"path": "__main__.Roll", "__module__": "elsewhere"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retval": [1, 2]}, r"^retval: must be an object \(a dict\), got list"),
        ({"retcode": "1"}, r"^retcode: must be an integer, got '1'"),
        ({"retcode": True}, r"^retcode: must be an integer"),
        ({"stdout": 3}, r"^stdout: must be a string, got int"),
    ],
)
def test_a_bad_result_names_its_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LegatoError, match=message):
        Result(**kwargs)


class Mutates(Task):
    def run(self) -> Result:
        out = Result(uuid=self.uuid)
        out.retcode = self.params["code"]
        return out


def test_a_task_returning_a_bad_result_fails_naming_the_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "legato.kser")
    task = {"entrypoint": Mutates.path, "uuid": "t-6", "params": {"code": "1"}}
    with pytest.raises(TaskFailed, match=r"Mutates\.run\.retcode: must be an integer, got '1'"):
        run_task(task, None)
    assert caplog.messages[-2].startswith("Mutates.Failed: ")  # Kser's line, before the error


def test_a_forwarded_failed_result_fails_before_running_anything() -> None:
    message = {"params": {}, "result": {"retcode": 3, "stderr": "prev failed"}}
    with pytest.raises(LegatoError, match=r"^result\.retcode: is 3: the message forwards a failed"):
        run_entry("__main__.Roll", message, "r")
    with pytest.raises(LegatoError, match=r"^result\.retcode: must be an integer"):
        run_entry("__main__.Roll", {"result": {"retcode": "x"}}, "r")
    reg = OperationRegistry()

    @reg.subscribe
    class Forwarded(Operation):
        def build_tasks(self, **kwargs: Any) -> list[Task]:
            return [Roll()]

    with pytest.raises(LegatoError, match=r"^result\.retcode: is 3"):
        build_operation(Forwarded.path, [Roll.path], message, "r")
    ok = run_entry("__main__.Roll", {"result": {"retcode": 0, "stdout": "before"}}, "r")
    assert ok["retcode"] == 0 and ok["stdout"] == "before\nYou made a 1"
