"""Dagger's builders as Legato definitions: the steps each task kind becomes, the joins of parallel
groups, run ids from instance ids, and the errors that name the builder call at fault."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from legato.compat.dagger import (
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    ExecutorTask,
    InvalidTaskType,
    KafkaCommandTask,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTask,
    KafkaListenerTaskTemplateBuilder,
    ParallelCompositeTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskOperator,
    TaskTemplate,
    TemplateDAG,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)
from legato.compat.dagger.definition import run_id_of
from legato.compat.dagger.tasks import record, run_task
from legato.errors import LegatoError


class Order(KafkaCommandTask[str, str]):
    pass


class Paid(KafkaListenerTask[str, str]):
    correlatable_key = "order_number"


class NoKey(KafkaListenerTask[str, str]):
    pass


class Work(ExecutorTask[str, str]):
    async def execute(
        self, runtime_parameters: dict[str, Any], workflow_instance: Any = None
    ) -> Any:
        return {"twice": runtime_parameters["n"] * 2, "run": workflow_instance.id}


class Choose(DecisionTask[str, str]):
    async def evaluate(self, **kwargs: Any) -> str | None:
        return self.next_dags[-1]


class Sends(KafkaCommandTask[str, str]):
    async def execute(
        self, runtime_parameters: dict[str, Any], workflow_instance: Any = None
    ) -> None:
        await Dagger.create_topic("OTHER").send(value='{"n": 1}')


def command(topic: str) -> TaskTemplate:
    b = KafkaCommandTaskTemplateBuilder(Dagger.app)
    b.set_topic(Dagger.create_topic(topic))
    b.set_type(Order)
    return b.build()


def listener(topic: str) -> TaskTemplate:
    b = KafkaListenerTaskTemplateBuilder(Dagger.app)
    b.set_topic(topic)
    b.set_type(Paid)
    return b.build()


def template(root: TaskTemplate, name: str = "t") -> TemplateDAG:
    p = ProcessTemplateDagBuilder(Dagger.app)
    p.set_name("P")
    p.set_root_task(root)
    b = DefaultTemplateBuilder(Dagger.app)
    b.set_name(name)
    b.set_root(p.build())
    return b.build()


def steps(t: TemplateDAG) -> dict[str, Any]:
    return {s.name: s for s in t.workflow.steps.values()}


def test_a_command_then_a_listener_are_an_emit_and_a_listen_keyed_by_the_runtime_parameter() -> (
    None
):
    c = KafkaCommandTaskTemplateBuilder(Dagger.app)
    c.set_topic("PAY")
    c.set_type(Order)
    c.set_next(listener("PAID"))
    built = steps(template(c.build()))
    assert built["PAY"].action.kind == "emit"
    assert built["PAY"].action.transport == "dagger"
    assert built["PAID"].action.kind == "listen"
    assert built["PAID"].action.event == "PAID"
    assert built["PAID"].depends_on == ("PAY",)
    assert template(c.build()).listeners == {"PAID": [Paid]}


def test_parallel_groups_join_by_their_operator() -> None:
    for operator, trigger, optional in (
        (TaskOperator.JOIN_ALL, "all_succeeded", False),
        (TaskOperator.ATLEAST_ONE, "one_succeeded", True),
    ):
        g = ParallelCompositeTaskTemplateBuilder(Dagger.app)
        g.add_parallel_task(listener("A"))
        g.add_parallel_task(listener("B"))
        g.set_task_operator(operator)
        g.set_next(command("AFTER"))
        built = steps(template(g.build()))
        assert built["AFTER"].trigger == trigger
        assert set(built["AFTER"].depends_on) == {"A", "B"}
        assert built["A"].optional is optional and built["B"].optional is optional


def test_a_decision_is_a_python_step_and_a_branch_over_its_next_tasks() -> None:
    d = DecisionTaskTemplateBuilder(Dagger.app)
    d.set_name("ROUTE")
    d.set_type(Choose)
    for name in ("LEFT", "RIGHT"):
        e = DefaultTaskTemplateBuilder(Dagger.app)
        e.set_name(name)
        e.set_type(Work)
        d.set_next(e.build())
    built = steps(template(d.build()))
    assert built["ROUTE"].action.kind == "python"
    assert built["ROUTE_branch"].action.kind == "branch"
    assert [then for _, then in built["ROUTE_branch"].action.cases] == [("LEFT",), ("RIGHT",)]


def test_a_trigger_waits_until_the_time_in_its_lookup_key() -> None:
    class Later(TriggerTask[str, str]):
        pass

    t = TriggerTaskTemplateBuilder(Dagger.app)
    t.set_type(Later)
    t.set_time_to_execute_lookup_key("DEADLINE")
    t.set_next(command("GO"))
    built = steps(template(t.build()))
    assert built["Later_at"].action.kind == "wait"
    assert built["GO"].depends_on == ("Later_at",)


def test_builder_mistakes_name_the_call_or_field() -> None:
    with pytest.raises(InvalidTaskType, match="set_type"):
        KafkaCommandTaskTemplateBuilder(Dagger.app).set_type(Paid)
    b = KafkaListenerTaskTemplateBuilder(Dagger.app)
    b.set_topic("X")
    b.set_type(NoKey)
    with pytest.raises(LegatoError, match="correlatable_key"):
        b.build()
    c = KafkaCommandTaskTemplateBuilder(Dagger.app)
    c.set_type(Order)
    with pytest.raises(LegatoError, match="set_topic"):
        c.build()
    with pytest.raises(LegatoError, match="set_root"):
        DefaultTemplateBuilder(Dagger.app).set_name("x").build()
    with pytest.raises(LegatoError, match="set_time_to_execute_lookup_key"):
        TriggerTaskTemplateBuilder(Dagger.app).set_type(TriggerTask).build()
    with pytest.raises(LegatoError, match="must return the template"):
        Dagger.register_template("nothing")(lambda name: None)  # type: ignore[arg-type,return-value]


def test_run_ids_come_from_instance_ids() -> None:
    one = uuid.uuid1()
    assert run_id_of(one) == one.hex
    assert run_id_of(str(one)) == one.hex
    derived = run_id_of("order-42")
    assert derived == run_id_of("order-42") and len(derived) == 32
    reserved = uuid.UUID("0123456789ab" + "f" + "0" * 19)  # the form of ids Legato makes
    assert run_id_of(reserved) != reserved.hex


async def test_the_python_step_calls_only_registered_classes_and_captures_sends() -> None:
    with pytest.raises(LegatoError, match="not registered"):
        await run_task("os:system", "execute", "x", {})
    b = KafkaCommandTaskTemplateBuilder(Dagger.app)
    b.set_topic("T")
    b.set_type(Sends)
    b.build()
    out = await run_task(f"{__name__}:Sends", "execute", "T", {"n": 1}, topic="T")
    assert out == {"topic": "OTHER", "message": {"n": 1}}
    command("T")  # registers Order
    default = await run_task(f"{__name__}:Order", "execute", "T", {"n": 2}, topic="T")
    assert default == {"topic": "T", "message": {"n": 2}}
    with pytest.raises(LegatoError, match="only possible inside"):
        record("T", 1)
    DefaultTaskTemplateBuilder(Dagger.app).set_type(Work).build()
    out = await run_task(f"{__name__}:Work", "execute", "W", {"n": 2}, run_id="r1")
    assert out == {"twice": 4, "run": "r1"}
    assert Dagger.topics["made-on-first-use"].name == "made-on-first-use"


def test_main_returns_at_once_when_imported() -> None:
    Dagger(broker="localhost:9092").main()  # called from a module that is not __main__


async def test_an_instance_without_the_parameters_its_tasks_need_is_refused_naming_them() -> None:
    c = KafkaCommandTaskTemplateBuilder(Dagger.app)
    c.set_topic("PAY")
    c.set_type(Order)
    c.set_next(listener("PAID"))
    built = template(c.build())
    with pytest.raises(
        LegatoError, match=r"order_number is missing \(needed by Paid.correlatable_key\)"
    ):
        await built.create_instance(uuid.uuid1(), customer_name="C")
    instance = await built.create_instance("O-1", order_number="O-1", repartition=False)
    assert instance.runtime_parameters == {"order_number": "O-1"}
    assert instance.run_id == run_id_of("O-1")


async def test_listener_classes_read_keys_in_each_of_daggers_ways() -> None:
    from legato.compat.dagger.service import correlatable_keys

    class Many(KafkaListenerTask[str, str]):
        correlatable_key = "id"

        async def get_correlatable_keys_from_payload(self, payload: Any) -> list[tuple[str, Any]]:
            return [("id", k) for k in orjson.loads(payload)["ids"]]

    assert await correlatable_keys(Paid, '{"order_number": "A"}') == ["A"]
    assert await correlatable_keys(Many, '{"ids": ["A", "B"]}') == ["A", "B"]
    with pytest.raises(KeyError):
        await correlatable_keys(Paid, '{"other": 1}')


def test_a_registered_process_is_reused_by_a_template() -> None:
    @Dagger.register_process_template("Simple")
    def simple(process_name: str) -> Any:
        p = ProcessTemplateDagBuilder(Dagger.app)
        p.set_name(process_name)
        p.set_root_task(listener("SIMPLE"))
        return p.build()

    b = DefaultTemplateBuilder(Dagger.app)
    b.set_name("OnTheFly")
    b.set_root(Dagger.process_templates["Simple"])
    assert steps(b.build())["SIMPLE"].action.kind == "listen"
    with pytest.raises(LegatoError, match="must return the process"):
        Dagger.register_process_template("none")(lambda name: None)  # type: ignore[arg-type,return-value]


def test_a_decision_reaches_targets_whose_first_steps_have_other_names() -> None:
    class Later(TriggerTask[str, str]):
        pass

    wait = TriggerTaskTemplateBuilder(Dagger.app)
    wait.set_name("LATER")
    wait.set_type(Later)
    wait.set_time_to_execute_lookup_key("at")
    shared = listener("SHARED")  # one template object used in two places
    group = ParallelCompositeTaskTemplateBuilder(Dagger.app)
    group.set_name("BOTH")
    group.add_parallel_task(shared)
    group.add_parallel_task(listener("OTHER"))
    d = DecisionTaskTemplateBuilder(Dagger.app)
    d.set_name("ROUTE")
    d.set_type(Choose)
    d.set_next(wait.build())
    d.set_next(group.build())
    c = KafkaCommandTaskTemplateBuilder(Dagger.app)
    c.set_topic("FIRST")
    c.set_type(Order)
    c.set_next(shared)
    c.set_next(d.build())
    built = template(c.build())
    branch = steps(built)["ROUTE_branch"].action
    assert [then for _, then in branch.cases] == [("LATER_at",), ("SHARED_2", "OTHER")]
    assert steps(built)["ROUTE"].action.args.source["next_dags"] == ["LATER", "BOTH"]
    assert built.required == {
        "order_number": "Paid.correlatable_key",
        "at": "LATER: set_time_to_execute_lookup_key",
    }
