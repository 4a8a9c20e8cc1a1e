"""Store faults: which errors mean "the store is unavailable", and how often the log says so."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from legato.store.faults import (
    REQUEST_LIMIT,
    Bounded,
    StoreUnavailable,
    Trouble,
    store_fault,
    unavailable,
)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (sqlite3.OperationalError("database or disk is full"), "disk full"),
        (sqlite3.OperationalError("disk I/O error"), "disk"),
        (ConnectionRefusedError(111, "Connection refused"), "connection"),
        (OSError(28, "No space left on device"), "disk full"),
        (TimeoutError(), "timeout"),
        (StoreUnavailable("connection", "gone"), "connection"),
    ],
)
def test_store_faults_are_recognised(exc: BaseException, kind: str) -> None:
    assert store_fault(exc) == kind
    fault = unavailable(exc)
    assert fault is not None and fault.kind == kind


def test_bugs_and_bad_sql_are_not_store_faults() -> None:
    assert store_fault(sqlite3.OperationalError("no such table: runs")) is None
    assert store_fault(ValueError("x")) is None
    assert store_fault(KeyError("x")) is None
    assert store_fault(FileNotFoundError(2, "No such file or directory")) is None


def test_asyncpg_connection_errors_are_store_faults() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    assert store_fault(asyncpg.exceptions.ConnectionDoesNotExistError("closed")) == "connection"
    assert store_fault(asyncpg.exceptions.AdminShutdownError("shutting down")) == "connection"
    assert store_fault(asyncpg.exceptions.DiskFullError("full")) == "disk full"
    assert store_fault(asyncpg.exceptions.UniqueViolationError("dup")) is None


def test_a_wrapped_driver_error_counts() -> None:
    outer = RuntimeError("cannot connect")
    outer.__cause__ = ConnectionRefusedError(111, "refused")
    assert store_fault(outer) == "connection"


def test_trouble_says_each_kind_once_per_window_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    trouble = Trouble(logging.getLogger("test.trouble"), every=10, clock=lambda: now[0])
    full = sqlite3.OperationalError("database or disk is full")
    with caplog.at_level(logging.WARNING, "test.trouble"):
        for i in range(17):
            now[0] = i * 0.5
            trouble.report(full, "commit")
        trouble.report(ConnectionRefusedError(111, "refused"))
        now[0] = 10.5
        trouble.report(full, "commit")
        trouble.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "store unavailable: commit: database or disk is full (disk full)",
        "store unavailable: [Errno 111] refused (connection)",
        "store unavailable: commit: database or disk is full (disk full; 17 times in 10 s)",
        "store available again",
    ]
    assert all(r.exc_info is None for r in caplog.records)


class _SlowStore:
    url = "slow://"

    async def get_run(self, run_id: str) -> str:
        await asyncio.sleep(0.5)
        return run_id

    async def list_services(self) -> list[str]:
        raise sqlite3.OperationalError("database or disk is full")


async def test_store_calls_in_a_request_are_bounded_and_faults_become_unavailable() -> None:
    store = Bounded(_SlowStore())
    assert await store.get_run("a") == "a"  # outside a request: as long as it takes
    token = REQUEST_LIMIT.set(0.05)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.get_run("a")
        assert raised.value.kind == "timeout"
        with pytest.raises(StoreUnavailable) as full:
            await store.list_services()
        assert full.value.kind == "disk full"
    finally:
        REQUEST_LIMIT.reset(token)
    store.url = "changed"  # attributes are the store's own
    assert store.url == "changed"
