"""Listen steps: wait for an event of a type whose key matches; a timeout fails them without retry."""

from __future__ import annotations

import pytest

from legato.engine.decider import event_key
from legato.engine.state import Cancel, EventArrived, Listening, Resume, Wake
from legato.errors import DefinitionError
from tests.unit.decider_support import Run, aborted, build, executed, schedules

URL = "http://svc.test/"


def listening(run: Run) -> list[Listening]:
    return [e for e in run.last.effects if isinstance(e, Listening)]


def order_run(**step: object) -> Run:
    wf = build(
        {
            "paid": {
                "listen": {"event": "payment.received", "key": "{{ input.order_id }}"},
                **step,
            },
            "ship": {"http": {"url": URL}, "depends_on": "paid"},
        },
        inputs=[{"name": "order_id", "type": "integer"}],
    )
    run = Run(wf, {"order_id": 42})
    run.start()
    return run


def test_a_listen_step_waits_for_its_event_and_takes_its_data() -> None:
    run = order_run()
    paid = run.step("paid")
    assert (paid.status, paid.reason) == ("waiting", "event")
    assert paid.request == {"event": "payment.received", "key": "42"}
    assert listening(run) == [Listening("paid", 1, "payment.received", "42")]
    d = run.send(EventArrived("paid", 1, {"amount": 10}))
    assert run.status("paid") == "succeeded"
    assert run.step("paid").output == {"amount": 10}
    assert executed(d) == ["ship"]
    assert run.send(EventArrived("paid", 1, {"amount": 11})).empty  # taken already


def test_a_listen_timeout_fails_the_step_without_retry() -> None:
    run = order_run(timeout=60, retry={"retries": 3})
    assert [s.at for s in schedules(run.last)] == [160.0]
    run.send(Wake("paid"), at=120.0)  # early: re-armed
    assert run.status("paid") == "waiting"
    run.send(Wake("paid"), at=160.0)
    paid = run.step("paid")
    assert paid.status == "failed"
    assert paid.error is not None and paid.error["kind"] == "timeout"
    assert "no 'payment.received' event for key '42'" in paid.error["message"]
    assert run.run_status == "failed"


def test_resume_listens_again_and_cancel_stops_listening() -> None:
    run = order_run()
    d = run.send(Resume())
    assert [e for e in d.effects if isinstance(e, Listening)] == [
        Listening("paid", 1, "payment.received", "42")
    ]
    d = run.send(Cancel("stop"))
    assert aborted(d) == ["paid"] and run.status("paid") == "cancelled"


def test_keys_compare_as_text() -> None:
    assert event_key(42) == event_key("42") == event_key(42.0) == "42"
    assert event_key(None) == ""
    assert event_key(True) == "true"


@pytest.mark.parametrize(
    ("listen", "message"), [({}, "event: is required"), ({"event": "x", "when": 1}, "not a known")]
)
def test_bad_listens_are_refused(listen: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        build({"a": {"listen": listen}})
