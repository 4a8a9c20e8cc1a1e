"""The pause before a failed message comes again grows and is capped; a burst of failures logs one
error (with its traceback) and one line when it ends; a producer's id header names the message."""

from __future__ import annotations

import logging

import pytest

from legato.transports import PAUSE_MAX, Failures, producer_id


def test_the_pause_doubles_up_to_the_cap_and_a_burst_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("legato.transports.test")
    failures = Failures(log, "orders")
    caplog.set_level(logging.INFO, "legato.transports.test")
    pauses = [failures.failed(ConnectionError("store down")) for _ in range(200)]
    assert pauses[:4] == [1.0, 2.0, 4.0, 8.0] and max(pauses) == PAUSE_MAX == pauses[-1]
    failures.succeeded()
    failures.succeeded()  # nothing to say: no failures since
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
    assert caplog.records[0].exc_info is not None
    assert "after 200 failures" in caplog.records[1].getMessage()
    assert failures.failed(ValueError("again")) == 1.0  # a new burst starts from the first pause


def test_a_producer_id_header_names_the_message() -> None:
    assert producer_id({"LEGATO-MESSAGE-ID": " o-1 ", "Message-Id": "m"}) == "o-1"
    assert producer_id({"message-id": "m", "Nats-Msg-Id": "n"}) == "m"
    assert producer_id({"Nats-Msg-Id": "n"}) == "n"
    assert producer_id({"Legato-Message-Id": " ", "X": "y"}) is None
    assert producer_id({}) is None
