"""Dagger's submit against a real engine (NATS, and the database on SQLite and PostgreSQL): the
same instance submitted again answers its run; another instance under the same id is refused."""

from __future__ import annotations

import uuid

import pytest

from legato.compat.dagger import Dagger
from legato.errors import Conflict
from tests.integration.brokers import broker_url
from tests.integration.test_dagger import executor, fresh, register, wait_run


@pytest.fixture(autouse=True)
def only_this_tests_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Dagger, "templates", {})


async def test_a_second_instance_under_the_same_id_is_refused(db_url: str) -> None:
    template = register(fresh("resubmit").replace("-", "_"), executor("NOTE"))
    other = register(fresh("other").replace("-", "_"), executor("NOTE"))
    async with Dagger(broker=broker_url("nats"), store=db_url) as service:
        same = uuid.uuid1()
        first = await template.create_instance(same, order_number="O-1")
        run_id = await service.submit(first)
        assert await service.submit(first) == run_id  # the same instance again: its run
        twin = await template.create_instance(same, order_number="O-1")
        assert await service.submit(twin) == run_id  # equal parameters: the same instance
        changed = await template.create_instance(same, order_number="O-OTHER")
        with pytest.raises(Conflict) as err:
            await service.submit(changed)
        assert f"instance id {same}" in str(err.value) and "other runtime parameters" in str(
            err.value
        )
        elsewhere = await other.create_instance(same, order_number="O-1")
        with pytest.raises(Conflict):
            await service.submit(elsewhere)
        run = await wait_run(service, run_id)
        assert run.info.status == "succeeded" and run.info.input == {"order_number": "O-1"}
