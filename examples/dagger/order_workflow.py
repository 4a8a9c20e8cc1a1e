"""Dagger's OrderWorkflow example, on Legato: the seed's code with its imports changed and the parts
it leaves out (the task classes, the SHIPPING process) written in.

    DAGGER_BROKER=nats://127.0.0.1:4222 .venv/bin/python examples/dagger/order_workflow.py

runs the worker (Ctrl-C stops it); `create_order()` below is the seed's way to start an order, from
any program that imports this module and runs the service (`async with workflow_engine:`). The
payment and shipping services are whoever reads PAYMENT_COMMAND and SHIPPING_COMMAND and answers on
PAYMENT_LISTENER and SHIPPING_LISTENER with the order's `order_number` in a JSON body.
tests/integration/test_dagger.py plays them.
"""

import json
import logging
import os
from typing import Any
from uuid import uuid1

from legato.compat.dagger import (
    Dagger,
    DefaultProcessTemplateDAGInstance,
    DefaultTemplateBuilder,
    DefaultTemplateDAGInstance,
    ITemplateDAG,
    KafkaCommandTask,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTask,
    KafkaListenerTaskTemplateBuilder,
    ProcessTemplateDagBuilder,
    TaskLookupKey,
    TemplateDAGInstance,
    Topic,
)

logger = logging.getLogger(__name__)

workflow_engine = Dagger(
    broker=os.environ.get("DAGGER_BROKER", "kafka://localhost:9092"),
    store=os.environ.get("DAGGER_STORE", "aerospike://"),
    datadir="/tmp/data/",
)


class PaymentKafkaCommandTask(KafkaCommandTask[str, str]):
    """Asks the payment service to charge the order."""

    async def execute(
        self, runtime_parameters: dict[str, str], workflow_instance: Any = None
    ) -> None:
        payload = {
            "order_number": runtime_parameters["order_number"],
            "customer_name": runtime_parameters["customer_name"],
        }
        await workflow_engine.topics[self.topic].send(value=json.dumps(payload))


class PaymentKafkaListenerTask(KafkaListenerTask[str, str]):
    """Waits for the payment service's answer about this order."""

    correlatable_key = "order_number"

    def get_correlatable_key(self, payload: Any) -> TaskLookupKey:
        body = json.loads(payload)
        return self.correlatable_key, body[self.correlatable_key]

    async def on_message(
        self, runtime_parameters: dict[str, str], *args: Any, **kwargs: Any
    ) -> bool:
        logger.info("order %s paid: %s", runtime_parameters["order_number"], args[0])
        return True


class ShippingKafkaCommandTask(KafkaCommandTask[str, str]):
    """Asks the shipping service to ship the order (the message is the runtime parameters)."""


class ShippingKafkaListenerTask(KafkaListenerTask[str, str]):
    """Waits for the shipping service to say the order left."""

    correlatable_key = "order_number"


def shipping_process_builder_for() -> ProcessTemplateDagBuilder:
    """The SHIPPING process, built like PAYMENT (the part the seed leaves out)."""
    shipping_process_builder = ProcessTemplateDagBuilder(Dagger.app)
    shipping_process_builder.set_name("SHIPPING")
    shipping_command_topic = Dagger.create_topic(
        "SHIPPING_COMMAND", key_type=bytes, value_type=bytes
    )
    shipping_command_task_template_builder = KafkaCommandTaskTemplateBuilder(Dagger.app)
    shipping_command_task_template_builder.set_topic(shipping_command_topic)
    shipping_command_task_template_builder.set_type(ShippingKafkaCommandTask)
    shipping_topic: Topic = Dagger.create_topic(
        "SHIPPING_LISTENER", key_type=bytes, value_type=bytes
    )
    shipping_listener_task_template_builder = KafkaListenerTaskTemplateBuilder(Dagger.app)
    shipping_listener_task_template_builder.set_topic(shipping_topic)
    shipping_listener_task_template_builder.set_type(ShippingKafkaListenerTask)
    shipping_listener_task_template = shipping_listener_task_template_builder.build()
    shipping_command_task_template_builder.set_next(shipping_listener_task_template)
    shipping_command_task_template = shipping_command_task_template_builder.build()
    shipping_process_builder.set_root_task(shipping_command_task_template)
    shipping_process_builder.set_type(DefaultProcessTemplateDAGInstance)
    return shipping_process_builder


@Dagger.register_template("OrderWorkflow")
def order_template(template_name: str) -> ITemplateDAG:
    # Create empty default Template
    template_builder = DefaultTemplateBuilder(Dagger.app)
    template_builder.set_name(template_name)
    template_builder.set_type(DefaultTemplateDAGInstance)

    # First process in template (first node in DAG) named waving
    payment_process_builder = ProcessTemplateDagBuilder(Dagger.app)
    payment_process_builder.set_name("PAYMENT")

    # First task and topic in payment process
    payment_command_topic = Dagger.create_topic("PAYMENT_COMMAND", key_type=bytes, value_type=bytes)
    payment_command_task_template_builder = KafkaCommandTaskTemplateBuilder(Dagger.app)
    payment_command_task_template_builder.set_topic(payment_command_topic)
    payment_command_task_template_builder.set_type(PaymentKafkaCommandTask)

    # Second task and topic in payment process
    payment_topic: Topic = Dagger.create_topic("PAYMENT_LISTENER", key_type=bytes, value_type=bytes)
    payment_listener_task_template_builder = KafkaListenerTaskTemplateBuilder(Dagger.app)
    payment_listener_task_template_builder.set_topic(payment_topic)
    payment_listener_task_template_builder.set_type(PaymentKafkaListenerTask)

    # Link and build tasks in payment process
    payment_listener_task_template = payment_listener_task_template_builder.build()
    payment_command_task_template_builder.set_next(payment_listener_task_template)
    payment_command_task_template = payment_command_task_template_builder.build()
    payment_process_builder.set_root_task(payment_command_task_template)
    payment_process_builder.set_type(DefaultProcessTemplateDAGInstance)

    # Build more processes like above and link them
    shipping_process_builder = shipping_process_builder_for()

    # Link and build processes in DAG: PAYMENT, then SHIPPING
    shipping_template = shipping_process_builder.build()
    payment_process_builder.set_next_process(shipping_template)
    payment_template = payment_process_builder.build()
    template_builder.set_root(payment_template)

    btemplate = template_builder.build()
    return btemplate


async def create_order(customer_name: str, order_number: str) -> TemplateDAGInstance:
    """The seed's second half: make an instance of the template and submit it (a run)."""
    template = workflow_engine.get_template("OrderWorkflow")
    runtime_parameters: dict[str, str] = dict()
    runtime_parameters["customer_name"] = customer_name
    runtime_parameters["order_number"] = order_number
    workflow_instance = await template.create_instance(uuid1(), **runtime_parameters)
    await workflow_engine.submit(workflow_instance)
    return workflow_instance


# Starts the worker (only when this file is the program: imported, e.g. by `legato serve --dags`,
# it returns at once)
workflow_engine.main()
