"""The outbox on PostgreSQL (schema version 9): notifications written with the decisions that
cause them; any engine sharing the database claims due rows (FOR UPDATE SKIP LOCKED, with a lease)
and settles them (see engine/notifier.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from legato.store.outbox_targets import EMAIL, RECEIVER_SQL
from legato.store.protocol import NotificationRow, OutboxItem

REAL = "DOUBLE PRECISION"
# Version 9: the outbox (see sqlite_outbox.py). A claimed row's `next_at` is the end of its lease.
V9 = f"""
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY, delivery_id TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL,
    event TEXT NOT NULL, channel TEXT NOT NULL, target TEXT NOT NULL, payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_at {REAL} NOT NULL, claimed_by TEXT, error TEXT,
    created_at {REAL} NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_at);
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS delivery_id TEXT;
"""
INSERT_OUTBOX = (
    "INSERT INTO outbox (delivery_id, run_id, event, channel, target, payload, next_at, "
    "created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (delivery_id) DO NOTHING"
)
# At most $6 rows per receiver, less those in flight ($5, a JSON object by receiver): see
# outbox_targets.py. The rows picked are locked (SKIP LOCKED: another engine has them) and checked
# due again, as a concurrent claim may have taken them meanwhile.
_CLAIM = f"""
WITH due AS (
    SELECT id, next_at, CASE WHEN channel = 'email' THEN $7
        ELSE lower(COALESCE(substring(target from '{RECEIVER_SQL}'), target)) END AS k
    FROM outbox WHERE next_at <= $3),
ranked AS (
    SELECT id, next_at, k, ROW_NUMBER() OVER (PARTITION BY k ORDER BY next_at, id) AS n FROM due),
picked AS (
    SELECT r.id FROM ranked r LEFT JOIN jsonb_each_text($5::jsonb) h ON h.key = r.k
    WHERE r.n <= $6 - COALESCE(h.value::int, 0) ORDER BY r.next_at, r.id LIMIT $4),
locked AS (
    SELECT o.id FROM outbox o JOIN picked p ON o.id = p.id WHERE o.next_at <= $3
    FOR UPDATE OF o SKIP LOCKED)
UPDATE outbox o SET claimed_by = $1, next_at = $2, attempts = o.attempts + 1 FROM locked
WHERE o.id = locked.id
RETURNING o.id, o.delivery_id, o.run_id, o.event, o.channel, o.target, o.payload, o.attempts,
    o.error, o.created_at
"""
INSERT_NOTIFICATION = (
    "INSERT INTO notifications (run_id, event, channel, target, ok, tries, error, created_at, "
    "delivery_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)


def notification_params(row: NotificationRow) -> tuple[Any, ...]:
    return (
        row.run_id,
        row.event,
        row.channel,
        row.target,
        row.ok,
        row.tries,
        row.error,
        row.created_at,
        row.delivery_id,
    )


class PostgresOutbox:
    """Mixed into PostgresStore."""

    if TYPE_CHECKING:

        @property
        def pool(self) -> asyncpg.Pool: ...

    async def claim_outbox(
        self,
        claimant: str,
        now: float,
        limit: int,
        lease: float,
        per_target: int | None = None,
        held: Mapping[str, int] | None = None,
    ) -> list[OutboxItem]:
        found = await self.pool.fetch(
            _CLAIM,
            claimant,
            now + lease,
            now,
            limit,
            orjson.dumps(held or {}).decode(),
            per_target or limit,
            EMAIL,
        )
        return [
            OutboxItem(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]), *tuple(r)[7:])
            for r in sorted(found, key=lambda r: int(r[0]))
        ]

    async def settle_outbox(
        self,
        item_id: int,
        claimant: str,
        *,
        retry_at: float | None = None,
        error: str | None = None,
        record: NotificationRow | None = None,
    ) -> bool:
        if record is None:
            result = await self.pool.execute(
                "UPDATE outbox SET claimed_by = NULL, next_at = $1, error = $2 "
                "WHERE id = $3 AND claimed_by = $4",
                retry_at,
                error,
                item_id,
                claimant,
            )
            return bool(int(result.rsplit(" ", 1)[-1]))
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM outbox WHERE id = $1 AND claimed_by = $2 RETURNING id",
                item_id,
                claimant,
            )
            if deleted is not None:
                await conn.execute(INSERT_NOTIFICATION, *notification_params(record))
        return deleted is not None

    async def next_outbox(self, after: float | None = None) -> float | None:
        if after is not None:
            value = await self.pool.fetchval(
                "SELECT MIN(next_at) FROM outbox WHERE next_at > $1", after
            )
            return None if value is None else float(value)
        value = await self.pool.fetchval("SELECT MIN(next_at) FROM outbox")
        return None if value is None else float(value)
