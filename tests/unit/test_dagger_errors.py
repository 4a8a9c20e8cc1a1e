"""Review fixes to Dagger's errors: a bad max run duration, a topic NATS would refuse and an
exception in a template's own function each name the Dagger call, without a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from legato.compat.dagger import (
    Dagger,
    DefaultTemplateBuilder,
    DefaultTemplateDAGInstance,
    KafkaCommandTask,
    KafkaCommandTaskTemplateBuilder,
    KafkaListenerTask,
    KafkaListenerTaskTemplateBuilder,
)
from legato.errors import LegatoError


class Paid(KafkaListenerTask[str, str]):
    correlatable_key = "order_number"


@pytest.fixture(autouse=True)
def only_this_tests_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Dagger, "templates", {})


@pytest.mark.parametrize("seconds", [-5, float("nan"), float("inf"), "10", True, None])
def test_a_bad_max_run_duration_names_the_call(seconds: Any) -> None:
    builder = KafkaListenerTaskTemplateBuilder(Dagger.app)
    with pytest.raises(LegatoError, match=r"^set_max_run_duration\(") as err:
        builder.set_max_run_duration(seconds)
    assert "steps." not in str(err.value)


def test_a_max_run_duration_of_0_means_no_bound() -> None:
    builder = KafkaListenerTaskTemplateBuilder(Dagger.app)
    builder.set_topic("PAID")
    builder.set_type(Paid)
    builder.set_max_run_duration(0)
    assert builder.build().timeout is None
    builder.set_max_run_duration(2.5)
    assert builder.build().timeout == 2.5


@pytest.mark.parametrize("name", ["a b.>*", "orders.*", "orders.>", "a..b", ".a", "a b", "", "é"])
def test_a_topic_nats_would_refuse_is_refused_when_built(name: str) -> None:
    with pytest.raises(LegatoError, match=r"^create_topic\(") as err:
        Dagger.create_topic(name)
    assert repr(name) in str(err.value)
    builder = KafkaCommandTaskTemplateBuilder(Dagger.app)
    with pytest.raises(LegatoError, match=r"^set_topic"):
        builder.set_topic(name)


@pytest.mark.parametrize("name", ["PAYMENT_COMMAND", "orders-topic", "orders.v1.created"])
def test_ordinary_topic_names_pass(name: str) -> None:
    assert Dagger.create_topic(name).name == name
    builder = KafkaCommandTaskTemplateBuilder(Dagger.app)
    builder.set_topic(name)
    builder.set_type(KafkaCommandTask)
    assert builder.build().topic == name


def test_an_exception_in_the_template_function_names_the_template() -> None:
    def broken(name: str) -> Any:
        template = DefaultTemplateBuilder(Dagger.app)
        template.set_name(name)
        template.set_type(DefaultTemplateDAGInstance)
        return 1 / 0

    with pytest.raises(LegatoError) as err:
        Dagger.register_template("T13")(broken)
    message = str(err.value)
    assert message == "register_template('T13'): broken raised ZeroDivisionError: division by zero"
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert "T13" not in Dagger.templates
