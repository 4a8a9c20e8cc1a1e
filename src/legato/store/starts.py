"""Starting a run once: an Idempotency-Key and a caller's run id, decided in the run's transaction.

A start with a key records (scope, key) -> (digest of the request, run id) in the same transaction
that inserts the run, so a key never names a run that was not committed, and two starts with one key
make one run: SQLite serialises writers (BEGIN IMMEDIATE); PostgreSQL's unique index makes the second
insert wait for the first transaction and then find its row. A caller's run id is checked in that
transaction too (under an advisory lock on PostgreSQL), so it is never written over.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from legato.engine.state import Decision
from legato.store.rows import BatchRows

if TYPE_CHECKING:
    from legato.store.postgres import Conn, PostgresStore
    from legato.store.sqlite import SQLiteStore

TABLE = "idempotency_keys"
SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    scope TEXT NOT NULL, key TEXT NOT NULL, digest TEXT NOT NULL, run_id TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS {TABLE}_expiry ON {TABLE} (expires_at);
"""
POSTGRES_SCHEMA = SQLITE_SCHEMA.replace("REAL", "DOUBLE PRECISION")


@dataclass(frozen=True, slots=True)
class StartKey:
    """An Idempotency-Key in its scope (the workflow), with the digest of the request it came with."""

    scope: str
    key: str
    digest: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """`started`: the run was committed now. Otherwise `run_id` is the run the key already names
    (`digest` says which request made it) or, with `key_digest` None, the run that has the id
    asked for (`run_status` its status)."""

    started: bool
    run_id: str
    key_digest: str | None = None
    run_status: str | None = None


def sqlite_start(
    store: SQLiteStore,
    conn: sqlite3.Connection,
    decision: Decision,
    key: StartKey | None,
    now: float,
) -> StartOutcome:
    if key is not None:
        found = conn.execute(
            f"SELECT run_id, digest FROM {TABLE} WHERE scope = ? AND key = ? AND expires_at > ?",
            (key.scope, key.key, now),
        ).fetchone()
        if found is not None:
            return StartOutcome(False, found[0], key_digest=found[1])
    row = conn.execute("SELECT status FROM runs WHERE id = ?", (decision.run_id,)).fetchone()
    if row is not None:
        return StartOutcome(False, decision.run_id, run_status=row[0])
    store._write(conn, BatchRows([decision], None, now), now)  # held by nobody: a worker claims it
    if key is not None:
        conn.execute(
            f"INSERT OR REPLACE INTO {TABLE} (scope, key, digest, run_id, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key.scope, key.key, key.digest, decision.run_id, now, key.expires_at),
        )
    return StartOutcome(True, decision.run_id)


async def postgres_start(
    store: PostgresStore, conn: Conn, decision: Decision, key: StartKey | None, now: float
) -> StartOutcome:
    if key is not None:
        await conn.execute(
            f"DELETE FROM {TABLE} WHERE scope = $1 AND key = $2 AND expires_at <= $3",
            key.scope,
            key.key,
            now,
        )
        # A concurrent start with this key holds its row: this insert waits for it to commit
        # (and then inserts nothing) or to roll back (and then inserts).
        mine = await conn.fetchval(
            f"INSERT INTO {TABLE} (scope, key, digest, run_id, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, key) DO NOTHING RETURNING 1",
            key.scope,
            key.key,
            key.digest,
            decision.run_id,
            now,
            key.expires_at,
        )
        if mine is None:
            found = await conn.fetchrow(
                f"SELECT run_id, digest FROM {TABLE} WHERE scope = $1 AND key = $2",
                key.scope,
                key.key,
            )
            assert found is not None  # rows are only deleted once expired, and this one is not
            return StartOutcome(False, found[0], key_digest=found[1])
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "run:" + decision.run_id)
    status = await conn.fetchval("SELECT status FROM runs WHERE id = $1", decision.run_id)
    if status is not None:
        raise _Taken(StartOutcome(False, decision.run_id, run_status=status))
    await store.write_new(conn, BatchRows([decision], None, now), now)
    return StartOutcome(True, decision.run_id)


class _Taken(Exception):
    """Rolls back a PostgreSQL start whose run id exists (its key row must not stay)."""

    def __init__(self, outcome: StartOutcome) -> None:
        super().__init__(outcome.run_id)
        self.outcome = outcome


async def postgres_start_once(
    store: PostgresStore, decision: Decision, key: StartKey | None, now: float
) -> StartOutcome:
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            return await postgres_start(store, conn, decision, key, now)
    except _Taken as taken:
        return taken.outcome


def purge_sql(placeholder: str) -> str:
    return f"DELETE FROM {TABLE} WHERE expires_at <= {placeholder}"
