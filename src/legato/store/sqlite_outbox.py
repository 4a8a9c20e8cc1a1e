"""The outbox on SQLite (schema version 9): notifications written with the decisions that cause
them, claimed and settled by the file's one engine (see engine/notifier.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from legato.store.outbox_targets import EMAIL
from legato.store.protocol import NotificationRow, OutboxItem

T = TypeVar("T")

# Version 9: the outbox. A row lives until its notification is delivered or given up on (its
# outcome then goes to `notifications`, which now keeps the delivery id too). A claimed row's
# `next_at` is the end of its claim's lease.
V9 = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, delivery_id TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL,
    event TEXT NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL, payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, claimed_by TEXT, error TEXT,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at);
ALTER TABLE notifications ADD COLUMN delivery_id TEXT
"""
INSERT_OUTBOX = (
    "INSERT OR IGNORE INTO outbox (delivery_id, run_id, event, channel, target, payload, "
    "next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# One engine per file: a row another claimant holds is a dead process's, due at once. At most ?6
# rows per receiver, less those in flight (?5, a JSON object by receiver): see outbox_targets.py.
_CLAIM = """
WITH due AS (
    SELECT id, next_at, CASE WHEN channel = 'email' THEN ?7
        ELSE legato_receiver(target) END AS k
    FROM outbox WHERE next_at <= ?3 OR (claimed_by IS NOT NULL AND claimed_by <> ?1)),
ranked AS (
    SELECT id, next_at, k, ROW_NUMBER() OVER (PARTITION BY k ORDER BY next_at, id) AS n FROM due),
picked AS (
    SELECT r.id FROM ranked r LEFT JOIN json_each(?5) h ON h.key = r.k
    WHERE r.n <= ?6 - COALESCE(h.value, 0) ORDER BY r.next_at, r.id LIMIT ?4)
UPDATE outbox SET claimed_by = ?1, next_at = ?2, attempts = attempts + 1
WHERE id IN (SELECT id FROM picked)
RETURNING id, delivery_id, run_id, event, channel, target, payload, attempts, error, created_at
"""
INSERT_NOTIFICATION = (
    "INSERT INTO notifications (run_id, event, channel, target, ok, tries, error, created_at, "
    "delivery_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def notification_params(row: NotificationRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.event,
        row.channel,
        row.target,
        int(row.ok),
        row.tries,
        row.error,
        row.created_at,
        row.delivery_id,
    )


class SQLiteOutbox:
    """Mixed into SQLiteStore."""

    if TYPE_CHECKING:

        async def _call(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

        def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    async def claim_outbox(
        self,
        claimant: str,
        now: float,
        limit: int,
        lease: float,
        per_target: int | None = None,
        held: Mapping[str, int] | None = None,
    ) -> list[OutboxItem]:
        busy = orjson.dumps(held or {}).decode()
        params = (claimant, now + lease, now, limit, busy, per_target or limit, EMAIL)

        def work(conn: sqlite3.Connection) -> list[OutboxItem]:
            found = conn.execute(_CLAIM, params).fetchall()
            return [
                OutboxItem(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]), *r[7:])
                for r in sorted(found)
            ]

        return await self._call(self._transaction, work)

    async def settle_outbox(
        self,
        item_id: int,
        claimant: str,
        *,
        retry_at: float | None = None,
        error: str | None = None,
        record: NotificationRow | None = None,
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            if record is None:
                return (
                    conn.execute(
                        "UPDATE outbox SET claimed_by = NULL, next_at = ?, error = ? "
                        "WHERE id = ? AND claimed_by = ?",
                        (retry_at, error, item_id, claimant),
                    ).rowcount
                    > 0
                )
            deleted = conn.execute(
                "DELETE FROM outbox WHERE id = ? AND claimed_by = ?", (item_id, claimant)
            ).rowcount
            if deleted:
                conn.execute(INSERT_NOTIFICATION, notification_params(record))
            return deleted > 0

        return await self._call(self._transaction, work)

    async def next_outbox(self, after: float | None = None) -> float | None:
        if after is not None:
            sql, params = "SELECT MIN(next_at) FROM outbox WHERE next_at > ?", (after,)
            rows = await self._call(self._fetch, sql, params)
            return rows[0][0] if rows else None
        rows = await self._call(self._fetch, "SELECT MIN(next_at) FROM outbox")
        return rows[0][0] if rows else None
