"""Trigger receipts: which run a broker message started, so a message delivered twice (a redelivery
after a crash between the run's commit and the broker's ack, or a producer's retry) starts one run.

A receipt (workflow, key) -> run id is inserted in the transaction that inserts the run. SQLite
serialises writers (BEGIN IMMEDIATE), so the second start finds the first's receipt; on PostgreSQL
the primary key makes a concurrent insert of the same key wait for the first transaction, then find
its row and write nothing. Receipts are kept as long as the database (a message id seen once is
never a new run again); they are small, one row per message that started a run.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from legato.engine.state import Decision
from legato.store.rows import BatchRows

if TYPE_CHECKING:
    from legato.store.postgres import PostgresStore
    from legato.store.sqlite import SQLiteStore

TABLE = "trigger_receipts"
# Version 10.
SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    workflow TEXT NOT NULL, key TEXT NOT NULL, run_id TEXT NOT NULL, destination TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (workflow, key));
"""
POSTGRES_SCHEMA = SQLITE_SCHEMA.replace("REAL", "DOUBLE PRECISION")


@dataclass(frozen=True, slots=True)
class Receipt:
    """What identifies a message for a workflow: its dedupe `key`, and where it came from."""

    workflow: str
    key: str
    destination: str


@dataclass(frozen=True, slots=True)
class Received:
    """`started`: the run was committed now; otherwise `run_id` is the run the key started before."""

    started: bool
    run_id: str


def sqlite_start(
    store: SQLiteStore, conn: sqlite3.Connection, decision: Decision, receipt: Receipt, now: float
) -> Received:
    found = conn.execute(
        f"SELECT run_id FROM {TABLE} WHERE workflow = ? AND key = ?",
        (receipt.workflow, receipt.key),
    ).fetchone()
    if found is not None:
        return Received(False, found[0])
    store._write(conn, BatchRows([decision], None, now), now)  # held by nobody: a worker claims it
    conn.execute(
        f"INSERT INTO {TABLE} (workflow, key, run_id, destination, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (receipt.workflow, receipt.key, decision.run_id, receipt.destination, now),
    )
    return Received(True, decision.run_id)


async def postgres_start(
    store: PostgresStore, decision: Decision, receipt: Receipt, now: float
) -> Received:
    async with store.pool.acquire() as conn, conn.transaction():
        # A concurrent start with this key holds its row: this insert waits for it to commit (and
        # then inserts nothing) or to roll back (and then inserts).
        mine = await conn.fetchval(
            f"INSERT INTO {TABLE} (workflow, key, run_id, destination, created_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workflow, key) DO NOTHING RETURNING 1",
            receipt.workflow,
            receipt.key,
            decision.run_id,
            receipt.destination,
            now,
        )
        if mine is None:
            found = await conn.fetchval(
                f"SELECT run_id FROM {TABLE} WHERE workflow = $1 AND key = $2",
                receipt.workflow,
                receipt.key,
            )
            return Received(False, str(found))
        await store.write_new(conn, BatchRows([decision], None, now), now)
        return Received(True, decision.run_id)
