"""Dagger's API on a real engine and a real broker: the seed's OrderWorkflow end to end (a test
consumer plays the payment and shipping services), decisions, parallel groups, trigger and
interval tasks."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from legato.compat.dagger import (
    Dagger,
    DecisionTask,
    DecisionTaskTemplateBuilder,
    DefaultProcessTemplateDAGInstance,
    DefaultTaskTemplateBuilder,
    DefaultTemplateBuilder,
    DefaultTemplateDAGInstance,
    ExecutorTask,
    IntervalTask,
    IntervalTaskTemplateBuilder,
    KafkaCommandTask,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTask,
    KafkaListenerTaskTemplateBuilder,
    ParallelCompositeTask,
    ParallelCompositeTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskOperator,
    TaskTemplate,
    TemplateDAG,
    TriggerTask,
    TriggerTaskTemplateBuilder,
)
from legato.transports import Message, Transport, open_transport
from tests.integration.brokers import broker_url, remove

EXAMPLE = Path(__file__).parents[2] / "examples" / "dagger" / "order_workflow.py"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("dagger_order_workflow", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ORDER_EXAMPLE = _load_example()
ORDER_TEMPLATE = Dagger.templates["OrderWorkflow"]


@pytest.fixture(params=["nats", "rabbitmq", "kafka"])
def broker(request: pytest.FixtureRequest) -> str:
    """Kafka's is the session's tansu broker (tests/integration/kafka.py), as for the triggers."""
    return broker_url(request.param)


@pytest.fixture(autouse=True)
def only_this_tests_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Templates are class-wide, as in Dagger: each test runs only the ones it registers."""
    monkeypatch.setattr(Dagger, "templates", {})


class Peer:
    """The other side of the broker: reads command topics, answers on listener topics."""

    def __init__(self, url: str, about: str | None = None) -> None:
        """`about`: only messages whose body holds it count (a Kafka topic keeps what earlier
        tests sent, and a new group reads it from the start)."""
        self.url = url
        self.about = about
        self.transport: Transport = open_transport(url)
        self.got: dict[str, list[Message]] = {}
        self.made: list[str] = []
        self.group = f"dagger-peer-{uuid.uuid4().hex[:8]}"

    async def __aenter__(self) -> Peer:
        await self.transport.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()
        await remove(self.url, self.made)

    async def read(self, topic: str, answer: Any = None) -> None:
        """Record what arrives on `topic`; `answer(body)` -> (topic, body) replies to it."""
        self.got[topic] = []
        self.made.append(topic)

        async def handle(message: Message) -> None:
            if self.about is not None and self.about.encode() not in message.data:
                return
            self.got[topic].append(message)
            if answer is not None:
                reply_to, body = answer(orjson.loads(message.data))
                await self.send(reply_to, body)

        # A group of its own: on Kafka, sharing the engine's group would make each join wait
        # for the whole group (and the previous test's members) to rebalance.
        await self.transport.subscribe(topic, handle, group=self.group)

    async def send(self, topic: str, body: Any) -> None:
        if topic not in self.made:
            self.made.append(topic)
        await self.transport.publish(topic, orjson.dumps(body), {})

    async def first(self, topic: str, seconds: float = 15) -> Message:
        for _ in range(int(seconds / 0.02)):
            if self.got.get(topic):
                return self.got[topic][0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"nothing arrived on {topic}")


def fresh(what: str) -> str:
    return f"dagger-test-{what}-{uuid.uuid4().hex[:10]}"


async def step_status(service: Dagger, run_id: str, step: str) -> str:
    assert service.engine is not None
    state = await service.engine.get_run(run_id)
    return state.steps[step].status if step in state.steps else "absent"


async def wait_run(service: Dagger, run_id: str, seconds: float = 20) -> Any:
    assert service.engine is not None
    return await service.engine.wait(run_id, timeout=seconds)


async def test_the_seeds_order_workflow_runs_over_the_broker(broker: str, db_url: str) -> None:
    Dagger.templates["OrderWorkflow"] = ORDER_TEMPLATE
    order = f"ORDER-{uuid.uuid4().hex[:8]}"
    async with Peer(broker, about=order) as peer:
        await peer.read("PAYMENT_COMMAND")
        await peer.read(
            "SHIPPING_COMMAND",
            lambda body: ("SHIPPING_LISTENER", {"order_number": body["order_number"], "box": 7}),
        )
        peer.made += ["PAYMENT_LISTENER", "SHIPPING_LISTENER"]
        async with Dagger(broker=broker, store=db_url) as workflow_engine:
            ORDER_EXAMPLE.workflow_engine = workflow_engine  # the example's create_order uses it
            instance = await ORDER_EXAMPLE.create_order("EXAMPLE_CUSTOMER", order)
            command = await peer.first("PAYMENT_COMMAND")
            assert orjson.loads(command.data) == {
                "order_number": order,
                "customer_name": "EXAMPLE_CUSTOMER",
            }
            assert command.headers["Legato-Run-Id"] == instance.run_id == instance.id.hex

            # An answer about another order does not reach this run.
            await peer.send("PAYMENT_LISTENER", {"order_number": "SOMEONE-ELSE", "paid": True})
            await asyncio.sleep(1.0)
            assert await step_status(workflow_engine, instance.run_id, "PAYMENT_LISTENER") == (
                "waiting"
            )
            assert not peer.got["SHIPPING_COMMAND"]

            await peer.send("PAYMENT_LISTENER", {"order_number": order, "paid": True})
            run = await wait_run(workflow_engine, instance.run_id)
            assert run.info.status == "succeeded", run.info.error
            assert run.steps["PAYMENT_LISTENER"].output == {"order_number": order, "paid": True}
            assert run.steps["SHIPPING_LISTENER"].output == {"order_number": order, "box": 7}
            shipped = orjson.loads(peer.got["SHIPPING_COMMAND"][0].data)
            assert shipped == {"order_number": order, "customer_name": "EXAMPLE_CUSTOMER"}

            # Submitting the same instance again finds its run: it does not run twice.
            assert await workflow_engine.submit(instance) == instance.run_id
            await asyncio.sleep(0.3)
            assert len(peer.got["PAYMENT_COMMAND"]) == 1


# -- decisions, parallel groups, trigger and interval tasks ------------------------------------


class Pick(DecisionTask[str, str]):
    async def evaluate(self, **kwargs: Any) -> str | None:
        return next((n for n in self.next_dags if n.endswith(kwargs["route"])), None)


class Note(ExecutorTask[str, str]):
    async def execute(
        self, runtime_parameters: dict[str, Any], workflow_instance: Any = None
    ) -> Any:
        return {"ran": self.name}


class Command(KafkaCommandTask[str, str]):
    pass


class Reply(KafkaListenerTask[str, str]):
    correlatable_key = "order_number"


class At(TriggerTask[str, str]):
    async def execute(
        self, runtime_parameters: dict[str, Any], workflow_instance: Any = None
    ) -> Any:
        return {"at": time.time()}


class UntilThird(IntervalTask[str, str]):
    async def interval_execute(self, runtime_parameters: dict[str, Any]) -> bool:
        runtime_parameters["count"] = runtime_parameters.get("count", 0) + 1
        return bool(runtime_parameters["count"] == runtime_parameters["succeed_at"])


def executor(name: str) -> TaskTemplate:
    builder = DefaultTaskTemplateBuilder(Dagger.app)
    builder.set_name(name)
    builder.set_type(Note)
    return builder.build()


def register(name: str, root: TaskTemplate) -> TemplateDAG:
    process = ProcessTemplateDagBuilder(Dagger.app)
    process.set_name("MAIN")
    process.set_root_task(root)
    process.set_type(DefaultProcessTemplateDAGInstance)
    template = DefaultTemplateBuilder(Dagger.app)
    template.set_name(name)
    template.set_type(DefaultTemplateDAGInstance)
    template.set_root(process.build())

    Dagger.register_template(name)(lambda _: template.build())
    return Dagger.templates[name]


async def start(service: Dagger, template: TemplateDAG, **params: Any) -> str:
    instance = await template.create_instance(uuid.uuid1(), **params)
    return await service.submit(instance)


async def test_a_decision_runs_the_task_it_names(db_url: str) -> None:
    decision = DecisionTaskTemplateBuilder(Dagger.app)
    decision.set_name("ROUTE")
    decision.set_type(Pick)
    decision.set_next(executor("EXPRESS"))
    decision.set_next(executor("STANDARD"))
    template = register(fresh("decision").replace("-", "_"), decision.build())
    async with Dagger(broker=broker_url("nats"), store=db_url) as service:
        run = await wait_run(service, await start(service, template, route="STANDARD"))
        assert run.info.status == "succeeded", run.info.error
        assert run.steps["STANDARD"].output == {"ran": "STANDARD"}
        assert run.steps["EXPRESS"].status == "skipped"


async def test_atleast_one_goes_on_after_one_child_and_join_all_waits_for_every_child(
    db_url: str,
) -> None:
    first, second, done = fresh("l1"), fresh("l2"), fresh("done")

    def listener(topic: str, timeout: float | None = None) -> TaskTemplate:
        builder = KafkaListenerTaskTemplateBuilder(Dagger.app)
        builder.set_topic(Dagger.create_topic(topic))
        builder.set_type(Reply)
        if timeout:
            builder.set_max_run_duration(timeout)
        return builder.build()

    def group(operator: TaskOperator, then: str) -> TaskTemplate:
        after = KafkaCommandTaskTemplateBuilder(Dagger.app)
        after.set_topic(then)
        after.set_type(Command)
        parallel = ParallelCompositeTaskTemplateBuilder(Dagger.app)
        parallel.set_name("both")
        parallel.add_parallel_task(listener(first, timeout=3))
        parallel.add_parallel_task(listener(second, timeout=3))
        parallel.set_type(ParallelCompositeTask)
        parallel.set_task_operator(operator)
        parallel.set_next(after.build())
        return parallel.build()

    one = register("dagger_atleast_one", group(TaskOperator.ATLEAST_ONE, done))
    every = register("dagger_join_all", group(TaskOperator.JOIN_ALL, done + "-all"))
    url = broker_url("nats")
    async with Peer(url) as peer, Dagger(broker=url, store=db_url) as service:
        await peer.read(done)
        await peer.read(done + "-all")
        peer.made += [first, second]
        order = uuid.uuid4().hex[:8]
        run_one = await start(service, one, order_number=order)
        run_all = await start(service, every, order_number=order)
        await asyncio.sleep(0.5)
        await peer.send(first, {"order_number": order})  # one child of each group answers
        emitted = await peer.first(done)  # ATLEAST_ONE went on at once
        assert orjson.loads(emitted.data)["order_number"] == order
        assert await step_status(service, run_one, second.replace("-", "_")) == "waiting"
        await asyncio.sleep(0.5)
        assert not peer.got[done + "-all"]  # JOIN_ALL still waits for its second child

        ended = await wait_run(service, run_one)  # the other child timed out: it was optional
        assert ended.info.status == "succeeded", ended.info.error
        ended = await wait_run(service, run_all)
        assert ended.info.status == "failed"
        assert not peer.got[done + "-all"]


async def test_a_trigger_task_runs_at_its_time_and_an_interval_task_until_done(
    db_url: str,
) -> None:
    trigger = TriggerTaskTemplateBuilder(Dagger.app)
    trigger.set_time_to_execute_lookup_key("DEADLINE")
    trigger.set_type(At)
    trigger.set_name("AT")
    interval = IntervalTaskTemplateBuilder(Dagger.app)
    interval.set_type(UntilThird)
    interval.set_name("CHECK")
    interval.set_interval_execute_period_lookup_key("interval")
    interval.set_time_to_force_complete_lookup_key("complete_by")
    trigger.set_next(interval.build())
    template = register("dagger_timers", trigger.build())
    async with Dagger(broker=broker_url("nats"), store=db_url) as service:
        due = time.time() + 1.5
        run_id = await start(
            service,
            template,
            DEADLINE=due,
            interval=0.2,
            complete_by=time.time() + 30,
            succeed_at=3,
        )
        run = await wait_run(service, run_id)
        assert run.info.status == "succeeded", run.info.error
        assert run.steps["AT"].output["at"] >= due - 0.01
        assert run.steps["CHECK"].output == {"completed": True, "checks": 3}

        # Never done: forced complete at its time.
        began = time.time()
        run_id = await start(
            service, template, DEADLINE=began, interval=0.2, complete_by=began + 1, succeed_at=0
        )
        run = await wait_run(service, run_id)
        assert run.steps["CHECK"].output["completed"] is False
        assert run.steps["CHECK"].output["forced"] is True
        assert 0.5 < time.time() - began < 10


async def test_the_example_runs_as_a_program_next_to_an_api_only_engine(shared_db: str) -> None:
    """`python order_workflow.py` is the worker (main()); another process on the same PostgreSQL
    database starts an order, and SIGTERM stops the worker cleanly."""
    from legato import Engine
    from legato.compat.dagger.definition import run_id_of
    from legato.engine.starts import Once

    url = broker_url("nats")
    env = {
        **os.environ,
        "PYTHONPATH": str(EXAMPLE.parents[2] / "src"),
        "DAGGER_BROKER": url,
        "DAGGER_STORE": shared_db,
    }
    order = f"ORDER-{uuid.uuid4().hex[:8]}"
    async with Peer(url) as peer:
        await peer.read(
            "PAYMENT_COMMAND",
            lambda body: ("PAYMENT_LISTENER", {"order_number": body["order_number"]}),
        )
        await peer.read(
            "SHIPPING_COMMAND",
            lambda body: ("SHIPPING_LISTENER", {"order_number": body["order_number"]}),
        )
        peer.made += ["PAYMENT_LISTENER", "SHIPPING_LISTENER"]
        worker = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with Engine.open(shared_db, worker=False) as api:
                for _ in range(300):  # the worker registers the template as it starts
                    if "OrderWorkflow" in {r.name for r in await api.store.list_workflows()}:
                        break
                    await asyncio.sleep(0.05)
                instance_id = uuid.uuid1()
                run_id = await api.start_run(
                    "OrderWorkflow",
                    {"customer_name": "C", "order_number": order},
                    run_id=run_id_of(instance_id),
                    once=Once(run_id=run_id_of(instance_id)),
                )
                run = await api.wait(run_id, timeout=30)
                assert run.info.status == "succeeded", run.info.error
        finally:
            worker.terminate()
            _, err = await asyncio.wait_for(worker.communicate(), 20)
        assert worker.returncode == 0, err.decode()[-2000:]


async def test_an_engine_started_elsewhere_reads_listener_topics_once_attached(db_url: str) -> None:
    """What a server that imported a Dagger file does: its own engine, the transport `dagger`,
    the template registered, then attach()."""
    from legato import Engine
    from legato.compat.dagger import attach

    Dagger.templates["OrderWorkflow"] = ORDER_TEMPLATE
    url = broker_url("rabbitmq")
    order = f"ORDER-{uuid.uuid4().hex[:8]}"
    async with Peer(url) as peer:
        for name in ("PAYMENT", "SHIPPING"):
            await peer.read(
                f"{name}_COMMAND",
                lambda body, n=name: (f"{n}_LISTENER", {"order_number": body["order_number"]}),
            )
        peer.made += ["PAYMENT_LISTENER", "SHIPPING_LISTENER"]
        engine = Engine.open(db_url)
        with pytest.raises(Exception, match="no transport named 'dagger'"):
            await attach(engine)
        engine.add_transport("dagger", url)
        async with engine:
            await engine.register(ORDER_TEMPLATE.workflow)
            await attach(engine)
            run = await engine.run(
                "OrderWorkflow", {"order_number": order, "customer_name": "C"}, timeout=20
            )
            assert run.info.status == "succeeded", run.info.error


async def test_a_worker_whose_broker_never_answers_stops_on_sigterm(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(EXAMPLE.parents[2] / "src"),
        "DAGGER_BROKER": "nats://127.0.0.1:9",  # nothing listens there: the client retries
        "DAGGER_STORE": f"sqlite:///{tmp_path / 'd.db'}",
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env=env, stderr=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(2)
    worker.terminate()
    _, err = await asyncio.wait_for(worker.communicate(), 15)
    assert worker.returncode == 1
    assert err.decode().rstrip().endswith("dagger: stopped while starting")
