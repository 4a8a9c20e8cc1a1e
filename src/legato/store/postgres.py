"""PostgreSQL through asyncpg: the same tables and rows as SQLite, for one engine or many processes.

`postgresql://user@host:5432/db` (also `postgres://`), with `?schema=name` to keep Legato's tables in
their own schema (created if missing). A batch of decisions is one transaction, as with SQLite; new
workflow versions are numbered under an advisory lock, so two processes registering at once cannot
take the same number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from legato.engine.lineage import RunFilter, RunLimits
from legato.engine.outcome import LogLine
from legato.engine.state import Attempt, Decision, RunInfo, RunState
from legato.errors import LegatoError
from legato.masking import mask_url
from legato.model.service import Service
from legato.store import access, postgres_lineage, receipts, starts, step_logs
from legato.store.access import AuditRow, SessionRow
from legato.store.migrations import Migration, to_apply
from legato.store.postgres_outbox import (
    INSERT_NOTIFICATION,
    INSERT_OUTBOX,
    V9,
    PostgresOutbox,
    notification_params,
)
from legato.store.protocol import (
    Accept,
    Claimed,
    Committed,
    Delivered,
    InboxRow,
    KeptEvent,
    NotificationRow,
    ScheduleRow,
    Target,
    WorkflowRecord,
)
from legato.store.rows import (
    EVENT_COLUMNS,
    RUN_COLUMNS,
    STEP_COLUMNS,
    BatchRows,
    dump,
    listen_key,
    load,
    run_info,
    step_state,
    workflow_record,
)
from legato.store.step_logs import LogChunk

log = logging.getLogger("legato.store")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCHEMA_LOCK = 0x1E6A70  # advisory lock key: one process creates the tables at a time
REAL = "DOUBLE PRECISION"
V1 = f"""
CREATE TABLE IF NOT EXISTS legato_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at {REAL} NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, spec TEXT NOT NULL,
    created_at {REAL} NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    input TEXT NOT NULL, output TEXT, error TEXT, created_at {REAL} NOT NULL, started_at {REAL},
    finished_at {REAL}, deadline {REAL});
CREATE INDEX IF NOT EXISTS runs_active ON runs (status)
    WHERE status IN ('pending', 'running', 'waiting');
CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, id);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, attempt INTEGER NOT NULL,
    tries INTEGER NOT NULL, started_at {REAL}, finished_at {REAL}, next_at {REAL}, request TEXT,
    output TEXT, error TEXT, reason TEXT, PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
    started_at {REAL}, finished_at {REAL}, request TEXT, output TEXT, error TEXT,
    PRIMARY KEY (run_id, step, attempt));
"""
V2 = f"""
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, key TEXT NOT NULL, data TEXT,
    created_at {REAL} NOT NULL, expires_at {REAL} NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_key ON events (type, key, id);
"""
# Version 3: runs live in the store while they wait (see sqlite.py's V3).
V3 = f"""
ALTER TABLE runs ADD COLUMN IF NOT EXISTS parent TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS lease_until {REAL};
ALTER TABLE runs ADD COLUMN IF NOT EXISTS wake_at {REAL};
-- Unfinished runs are taken over by the first engine (held by nobody, lease run out), and a child
-- run learns which parent step waits for it.
UPDATE runs SET owner = '', lease_until = 0 WHERE status IN ('pending', 'running', 'waiting');
UPDATE runs r SET parent = json_build_array(s.run_id, s.name, s.attempt)::text FROM steps s
    WHERE s.status = 'waiting' AND s.reason = 'child' AND s.request::json->>'run_id' = r.id;
CREATE INDEX IF NOT EXISTS runs_wake ON runs (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_owner ON runs (lease_until) WHERE owner IS NOT NULL;
ALTER TABLE steps ADD COLUMN IF NOT EXISTS listen_key TEXT;
UPDATE steps SET listen_key = '[' || to_json(request::json->>'event')::text || ','
    || to_json(request::json->>'key')::text || ']' WHERE status = 'waiting' AND reason = 'event';
CREATE INDEX IF NOT EXISTS steps_listening ON steps (listen_key) WHERE listen_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS inbox (
    id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, event TEXT NOT NULL, dedupe TEXT UNIQUE,
    created_at {REAL} NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_by_run ON inbox (run_id, id);
"""
# Version 4: scheduled workflows. One row per workflow with a schedule: the start of its next
# interval to run, moved on (under the row's lock) in the transaction that inserts the run. And
# what became of each notification (email, webhook) about a run.
V4 = f"""
CREATE TABLE IF NOT EXISTS schedules (
    workflow TEXT PRIMARY KEY, next_start {REAL}, paused BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at {REAL} NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, event TEXT NOT NULL, channel TEXT NOT NULL,
    target TEXT NOT NULL, ok BOOLEAN NOT NULL, tries INTEGER NOT NULL, error TEXT,
    created_at {REAL} NOT NULL);
CREATE INDEX IF NOT EXISTS notifications_by_run ON notifications (run_id, id);
"""
# Version 6: Idempotency-Keys of run starts (see starts.py).
# Version 7: secrets that templates read as `{{ secrets.NAME }}`, set through the API or the CLI.
V7 = f"""
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at {REAL} NOT NULL);
"""
MIGRATIONS: list[Migration] = [
    (1, V1),
    (2, V2),
    (3, V3),
    (4, V4),
    (5, postgres_lineage.V5),
    (6, starts.POSTGRES_SCHEMA),
    (7, V7),
    (8, access.POSTGRES_V8),
    (9, V9),
    (10, receipts.POSTGRES_SCHEMA),
    (11, step_logs.POSTGRES_V11),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
_UPSERT_RUN = """
INSERT INTO runs (id, workflow, version, status, input, output, error, created_at, started_at,
                  finished_at, deadline, parent, owner, lease_until, wake_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output,
    error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at,
    deadline = excluded.deadline,
    owner = CASE WHEN excluded.status IN ('pending', 'running', 'waiting') THEN runs.owner END,
    lease_until = CASE WHEN excluded.status IN ('pending', 'running', 'waiting')
        THEN runs.lease_until END,
    wake_at = CASE WHEN excluded.status IN ('pending', 'running', 'waiting') THEN runs.wake_at
        ELSE (SELECT MIN(created_at) FROM inbox WHERE inbox.run_id = runs.id) END
"""
_UPSERT_STEP = """
INSERT INTO steps (run_id, name, status, attempt, tries, started_at, finished_at, next_at,
                   request, output, error, reason, listen_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (run_id, name) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
    tries = excluded.tries, started_at = excluded.started_at, finished_at = excluded.finished_at,
    next_at = excluded.next_at, request = excluded.request, output = excluded.output,
    error = excluded.error, reason = excluded.reason, listen_key = excluded.listen_key
"""
# A run's wake time only moves earlier while it waits (LEAST ignores NULL).
_WAKE = "UPDATE runs SET wake_at = LEAST(wake_at, $1) WHERE id = $2"
_INBOX = "INSERT INTO inbox (run_id, event, dedupe, created_at) VALUES ($1, $2, $3, $4)"
# Due at its next time, or at once if its inbox holds something. (The commit has locked the run's
# row first, so a delivery that waited on it has committed and this statement sees its row.)
_PENDING = "(SELECT MIN(created_at) FROM inbox WHERE inbox.run_id = runs.id)"
_RELEASE = (
    f"UPDATE runs SET owner = NULL, lease_until = NULL, wake_at = LEAST($1, {_PENDING}) "
    "WHERE id = $2 AND owner = $3"
)
_CLAIM = """
WITH due AS (
    SELECT id, owner FROM runs WHERE owner IS NULL AND wake_at <= $1
    ORDER BY wake_at LIMIT $2 FOR UPDATE SKIP LOCKED),
expired AS (
    SELECT id, owner FROM runs WHERE owner IS NOT NULL AND lease_until < $1 AND owner <> $3
    LIMIT $2 FOR UPDATE SKIP LOCKED),
found AS (SELECT * FROM due UNION ALL SELECT * FROM expired LIMIT $2)
UPDATE runs r SET owner = $3, lease_until = $4, wake_at = NULL FROM found WHERE r.id = found.id
RETURNING r.id, found.owner
"""
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
_HEARD = "UPDATE steps SET listen_key = NULL WHERE run_id = $1 AND name = $2"
_NOTICE_IDS = 150  # run ids per notification (a payload holds under 8000 bytes)
_UPSERT_ATTEMPT = """
INSERT INTO attempts (run_id, step, attempt, status, started_at, finished_at, request, output, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (run_id, step, attempt) DO UPDATE SET status = excluded.status,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    request = excluded.request, output = excluded.output, error = excluded.error
"""


def _connection(url: str) -> tuple[str, str | None]:
    """The DSN for asyncpg (without our own options) and the schema, if one was asked for."""
    parts = urlsplit(url)
    options = parse_qs(parts.query)
    schema = options.pop("schema", [None])[0]
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        # Lower case only: PostgreSQL folds an unquoted name, and the pool's search_path is unquoted.
        raise LegatoError(f"schema must be lower-case letters, digits and '_', not {schema!r}")
    query = urlencode({k: v[0] for k, v in options.items()})
    return urlunsplit(parts._replace(scheme="postgresql", query=query)), schema


def _notices(notice: dict[str, Any], sender: str) -> list[str]:
    """A notice as NOTIFY payloads, its run ids split so each stays well under 8000 bytes."""
    if not notice:
        return []
    payloads = [
        orjson.dumps({"s": sender, **{k: v for k, v in notice.items() if k in "wdx"}}).decode()
    ]
    for kind in ("i", "e"):
        ids = notice.get(kind, [])
        for i in range(0, len(ids), _NOTICE_IDS):
            part = {"s": sender, kind: ids[i : i + _NOTICE_IDS]}
            payloads.append(orjson.dumps(part).decode())
    return payloads


class PostgresStore(PostgresOutbox):
    shared = True  # many engines on many machines (see Store.shared)

    def __init__(self, url: str) -> None:
        self.url = url
        self.owner: str | None = None
        self.lease = 30.0
        self._dsn, self.schema = _connection(url)
        self.channel = f"legato_{self.schema or 'public'}"
        self._sender = secrets.token_hex(8)
        self._listening: asyncpg.Connection | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self.migrate = (
            False  # upgrade an older schema on open (`legato migrate`, `serve --migrate`)
        )
        self.target: int | None = None  # the version to stop at (tests build old databases)
        self.found_version = 0
        self.version = 0

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LegatoError("the store is not open")
        return self._pool

    async def open(self) -> None:
        async with self._opening:
            if self._pool is None:
                await self._open()

    async def _open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else None
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise LegatoError(
                f"cannot connect to PostgreSQL at {mask_url(self.url)}: {exc}"
            ) from exc
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                if self.schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
                has_meta = await conn.fetchval("SELECT to_regclass('legato_meta') IS NOT NULL")
                found = (
                    await conn.fetchval(
                        "SELECT value FROM legato_meta WHERE key = 'schema_version'"
                    )
                    if has_meta
                    else None
                )
                self.found_version = int(found) if found else 0
                plan = to_apply(
                    MIGRATIONS,
                    self.found_version,
                    self.url,
                    allowed=self.migrate,
                    target=self.target,
                )
                for version, sql in plan:  # all in this one transaction, with the version mark
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO legato_meta VALUES ('schema_version', $1) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        str(version),
                    )
                self.version = plan[-1][0] if plan else self.found_version
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=10, server_settings=settings
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise LegatoError(
                f"cannot connect to PostgreSQL at {mask_url(self.url)}: {exc}"
            ) from exc

    async def close(self) -> None:
        if self._listening is not None:
            with contextlib.suppress(Exception):
                await self._listening.close()
            self._listening = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def probe(self) -> None:
        await self.pool.fetchval(
            "INSERT INTO legato_meta VALUES ('probe', $1) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value RETURNING value",
            repr(time.time()),
        )

    # -- notifications ------------------------------------------------------------------------

    async def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)
        if self._listening is None:
            await self._connect_listener()

    async def _connect_listener(self) -> None:
        settings = {"search_path": self.schema} if self.schema else None
        conn = await asyncpg.connect(self._dsn, timeout=10, server_settings=settings)
        await conn.add_listener(self.channel, self._heard)
        self._listening = conn

    async def keep_listening(self) -> bool:
        if not self._listeners or (self._listening is not None and not self._listening.is_closed()):
            return False
        try:
            await self._connect_listener()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot listen for notices yet (%s); trying again", exc)
            return False
        log.warning("listening for notices again after the connection was lost")
        return True

    def _heard(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        try:
            notice = orjson.loads(payload)  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError):
            return
        if notice.pop("s", None) == self._sender:
            return  # the engine heard its own change already
        for listener in self._listeners:
            try:
                listener(notice)
            except Exception:
                log.exception("notice listener failed")

    async def _notify(self, conn: Conn, notice: dict[str, Any]) -> None:
        """Sent with the transaction: others hear of it once (and only if) it commits."""
        for payload in _notices(notice, self._sender):
            await conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)

    # -- writes -------------------------------------------------------------------------------

    async def commit(self, decisions: Sequence[Decision]) -> Committed:
        now = time.time()
        rows = BatchRows(decisions, self.owner, now + self.lease)
        if rows.empty:
            return Committed()  # effects only (a resumed run): nothing to write
        async with self.pool.acquire() as conn, conn.transaction():
            # Locks in one order everywhere (correlations, then runs by id), so no two
            # transactions wait on each other: a step that starts listening serialises with a
            # publish of its event, and the rows of this batch with claims and deliveries.
            keys = sorted({r[12] for r in rows.steps if r[12] is not None})
            for key in keys:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
            locking = sorted({*rows.existing, *(run for run, _ in rows.deliveries)})
            lost: set[str] = set()
            if locking:
                owners: dict[str, str | None] = dict(
                    await conn.fetch(  # type: ignore[arg-type]
                        "SELECT id, owner FROM runs WHERE id = ANY($1::text[]) ORDER BY id "
                        "FOR UPDATE",
                        locking,
                    )
                )
                lost = {i for i in rows.existing if i in owners and owners[i] != self.owner}
                rows = rows.only(lost)
            if rows.inbox_done:  # first: an ended run's wake time counts only what is left
                await conn.executemany("DELETE FROM inbox WHERE id = $1", rows.inbox_done)
            await self._write_rows(conn, rows, now)
            due = False
            for run, wake in rows.releases.items():
                at = await conn.fetchval(_RELEASE + " RETURNING wake_at", wake, run, self.owner)
                due = due or (at is not None and at <= now)
            await self._notify(conn, rows.notice(now))
        return Committed(frozenset(lost), due)

    # -- claims and inboxes -------------------------------------------------------------------

    async def claim(self, now: float, limit: int) -> list[Claimed]:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetch(_CLAIM, now, limit, self.owner, now + self.lease)
            if not found:
                return []
            ids = [r[0] for r in found]
            states = await self._states(conn, ids)
            inbox = await self._inbox(conn, ids)
        return [
            Claimed(states[r[0]], inbox.get(r[0], []), r[1] is not None)
            for r in found
            if r[0] in states
        ]

    async def _states(self, conn: Conn, ids: list[str]) -> dict[str, RunState]:
        runs = await conn.fetch(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ANY($1::text[])", ids)
        states = {r[0]: RunState(run_info(tuple(r))) for r in runs}
        for s in await conn.fetch(
            f"SELECT run_id, {STEP_COLUMNS} FROM steps WHERE run_id = ANY($1::text[])", ids
        ):
            states[s[0]].steps[s[1]] = step_state(tuple(s)[1:])
        return states

    async def _inbox(self, conn: Conn, ids: Sequence[str]) -> dict[str, list[InboxRow]]:
        inbox: dict[str, list[InboxRow]] = {}
        for r in await conn.fetch(
            "SELECT id, run_id, event FROM inbox WHERE run_id = ANY($1::text[]) ORDER BY id",
            list(ids),
        ):
            inbox.setdefault(r[1], []).append(InboxRow(r[0], r[1], orjson.loads(r[2])))
        return inbox

    async def inbox(self, run_ids: Sequence[str]) -> list[InboxRow]:
        async with self.pool.acquire() as conn:
            found = await self._inbox(conn, run_ids)
        return sorted((row for rows in found.values() for row in rows), key=lambda r: r.id)

    async def renew(self, now: float, run_ids: Sequence[str]) -> int:
        result = await self.pool.execute(
            "UPDATE runs SET lease_until = $1 WHERE owner = $2 AND id = ANY($3::text[])",
            now + self.lease,
            self.owner,
            list(run_ids),
        )
        return int(result.rsplit(" ", 1)[-1])

    async def hand_back(self, run_ids: Sequence[str], after: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE runs SET owner = '', lease_until = $1 WHERE id = ANY($2::text[]) "
                "AND owner = $3",
                after,
                list(run_ids),
                self.owner,
            )
            await self._notify(conn, {"w": after})

    async def release_all(self, now: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Held by nobody with the lease run out: the next engine resumes each in full (the
            # effects this one skipped while draining are issued again).
            await conn.execute(
                "UPDATE runs SET owner = '', lease_until = 0 WHERE owner = $1", self.owner
            )
            await self._notify(conn, {"w": now})

    async def next_wake(self) -> float | None:
        value = await self.pool.fetchval(
            "SELECT LEAST((SELECT MIN(wake_at) FROM runs WHERE owner IS NULL AND wake_at IS NOT "
            "NULL), (SELECT MIN(lease_until) FROM runs WHERE owner IS NOT NULL AND owner <> $1))",
            self.owner or "",
        )
        return float(value) if value is not None else None

    async def deliver(
        self,
        run_id: str,
        event: dict[str, Any],
        now: float,
        *,
        step: str | None = None,
        accept: Accept | None = None,
        dedupe: str | None = None,
    ) -> Delivered:
        async with self.pool.acquire() as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT status, owner FROM runs WHERE id = $1 FOR UPDATE", run_id
            )
            if found is None:
                return Delivered(False)
            at = None
            if step is not None:
                s = await conn.fetchrow(
                    "SELECT status, attempt, reason FROM steps WHERE run_id = $1 AND name = $2",
                    run_id,
                    step,
                )
                at = (s[0], s[1], s[2]) if s else None
            target = Target(found[0], found[1], at)
            if accept is not None and not accept(target):
                return Delivered(False, target)
            added = await conn.fetchval(
                _INBOX + " ON CONFLICT (dedupe) DO NOTHING RETURNING id",
                run_id,
                dump(event),
                dedupe,
                now,
            )
            if added is None:
                return Delivered(False, target, duplicate=True)
            await conn.execute(_WAKE, now, run_id)
            await self._notify(conn, {"i": [run_id], "w": now})
        return Delivered(True, target, runs=[run_id])

    async def publish(
        self,
        type: str,
        key: str,
        now: float,
        make: Callable[[str, int], dict[str, Any]],
        keep: KeptEvent | None,
    ) -> list[str]:
        correlation = listen_key(type, key)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", correlation)
            listeners = await conn.fetch(
                "SELECT run_id, name, attempt FROM steps WHERE listen_key = $1 ORDER BY run_id",
                correlation,
            )
            for run_id, name, attempt in listeners:
                await conn.execute(_INBOX, run_id, dump(make(name, attempt)), None, now)
                await conn.execute(_WAKE, now, run_id)
                # Each listening attempt takes one event: the next one is kept, or goes to the
                # attempt that listens after it.
                await conn.execute(_HEARD, run_id, name)
            runs = sorted({r[0] for r in listeners})
            if runs:
                await self._notify(conn, {"i": runs, "w": now})
            elif keep is not None:
                await conn.execute("DELETE FROM events WHERE expires_at <= $1", now)
                await conn.execute(
                    f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                    keep.id,
                    keep.type,
                    keep.key,
                    dump(keep.data),
                    keep.created_at,
                    keep.expires_at,
                )
        return runs

    async def take_kept(
        self,
        type: str,
        key: str,
        now: float,
        run_id: str,
        step: str,
        make: Callable[[KeptEvent], dict[str, Any]],
    ) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", listen_key(type, key))
            r = await conn.fetchrow(
                f"DELETE FROM events WHERE id = (SELECT id FROM events WHERE type = $1 AND key = $2 "
                f"AND expires_at > $3 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
                f"RETURNING {EVENT_COLUMNS}",
                type,
                key,
                now,
            )
            if r is None:
                return False
            kept = KeptEvent(r[0], r[1], r[2], load(r[3]), r[4], r[5])
            await conn.execute(_INBOX, run_id, dump(make(kept)), None, now)
            await conn.execute(_WAKE, now, run_id)
            await conn.execute(_HEARD, run_id, step)
            await self._notify(conn, {"i": [run_id], "w": now})
        return True

    async def save_workflow(self, name: str, digest: str, spec: dict[str, Any]) -> WorkflowRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"workflow:{name}")
            row = await conn.fetchrow(
                "SELECT version, digest, spec, created_at FROM workflows WHERE name = $1 "
                "ORDER BY version DESC LIMIT 1",
                name,
            )
            if row is not None and row["digest"] == digest:
                return WorkflowRecord(name, row[0], row[1], load(row[2]), row[3])
            version = 1 if row is None else row[0] + 1
            now = time.time()
            await conn.execute(
                "INSERT INTO workflows VALUES ($1, $2, $3, $4, $5)",
                name,
                version,
                digest,
                dump(spec),
                now,
            )
        return WorkflowRecord(name, version, digest, spec, now, created=True)

    async def put_service(self, service: Service) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO services VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE "
                "SET spec = excluded.spec, updated_at = excluded.updated_at",
                service.name,
                dump(service.to_dict()),
                time.time(),
            )
            await self._notify(conn, {"d": service.name})  # every engine re-reads the directory

    async def delete_service(self, name: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            result = await conn.execute("DELETE FROM services WHERE name = $1", name)
            await self._notify(conn, {"d": name})
        return bool(result.endswith(" 1"))

    async def put_user_secret(self, name: str, value: str) -> None:
        await self.pool.execute(
            "INSERT INTO secrets VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE "
            "SET value = excluded.value, updated_at = excluded.updated_at",
            name,
            value,
            time.time(),
        )

    async def delete_user_secret(self, name: str) -> bool:
        result = await self.pool.execute("DELETE FROM secrets WHERE name = $1", name)
        return bool(result.endswith(" 1"))

    async def get_user_secret(self, name: str) -> str | None:
        value = await self.pool.fetchval("SELECT value FROM secrets WHERE name = $1", name)
        return None if value is None else str(value)

    async def list_user_secrets(self) -> list[tuple[str, float]]:
        rows = await self.pool.fetch("SELECT name, updated_at FROM secrets")
        return sorted(((str(r[0]), float(r[1])) for r in rows), key=lambda r: r[0])

    async def secret(self, name: str) -> str:
        key = f"secret:{name}"
        await self.pool.execute(
            "INSERT INTO legato_meta VALUES ($1, $2) ON CONFLICT DO NOTHING",
            key,
            secrets.token_urlsafe(32),
        )
        value = await self.pool.fetchval("SELECT value FROM legato_meta WHERE key = $1", key)
        return str(value)

    # -- reads --------------------------------------------------------------------------------

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowRecord | None:
        columns = "SELECT name, version, digest, spec, created_at FROM workflows"
        if version is None:
            row = await self.pool.fetchrow(
                f"{columns} WHERE name = $1 ORDER BY version DESC LIMIT 1", name
            )
        else:
            row = await self.pool.fetchrow(
                f"{columns} WHERE name = $1 AND version = $2", name, version
            )
        return workflow_record(tuple(row)) if row else None

    async def list_workflows(self) -> list[WorkflowRecord]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (name) name, version, digest, spec, created_at FROM workflows "
            "ORDER BY name, version DESC"
        )
        # Sorted here, by code point as SQLite does, whatever the database's collation.
        return sorted((workflow_record(tuple(r)) for r in rows), key=lambda w: w.name)

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        rows = await self.pool.fetch(
            "SELECT name, version, digest, spec, created_at FROM workflows WHERE name = $1 "
            "ORDER BY version",
            name,
        )
        return [workflow_record(tuple(r)) for r in rows]

    async def list_services(self) -> list[Service]:
        rows = await self.pool.fetch("SELECT spec FROM services")
        return sorted(
            (Service.from_dict(load(r[0]), strict=False) for r in rows), key=lambda s: s.name
        )

    async def run_status(self, run_id: str) -> str | None:
        status = await self.pool.fetchval("SELECT status FROM runs WHERE id = $1", run_id)
        return None if status is None else str(status)

    async def get_run(self, run_id: str) -> RunState | None:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = $1", run_id)
            if row is None:
                return None
            steps = await conn.fetch(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = $1", run_id)
        return RunState(run_info(tuple(row)), {s[0]: step_state(tuple(s)) for s in steps})

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        rows = await self.pool.fetch(
            "SELECT run_id, step, attempt, status, started_at, finished_at, request, output, error "
            "FROM attempts WHERE run_id = $1 UNION ALL "
            "SELECT run_id, name, attempt, status, started_at, finished_at, request, output, error "
            "FROM steps WHERE run_id = $1 AND status = 'succeeded' AND attempt > 0 "
            "ORDER BY 5 NULLS FIRST, 2, 3",  # NULLs first, as SQLite sorts them
            run_id,
        )
        return [
            Attempt(r[0], r[1], r[2], r[3], r[4], r[5], load(r[6]), load(r[7]), load(r[8]))
            for r in rows
        ]

    async def list_runs(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
        workflows: Sequence[str] | None = None,
    ) -> list[RunInfo]:
        where: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("workflow", "=", workflow),
            ("status", "=", status),
            ("id", "<", before),
        ):
            if value is not None:
                params.append(value)
                where.append(f"{column} {op} ${len(params)}")
        if workflows is not None:
            params.append(list(workflows))
            where.append(f"workflow = ANY(${len(params)}::text[])")
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit)
        sql += f" ORDER BY id DESC LIMIT ${len(params)}"
        rows = await self.pool.fetch(sql, *params)
        return [run_info(tuple(r)) for r in rows]

    # -- run trees (see engine/lineage.py) -----------------------------------------------------

    async def write_new(self, conn: Conn, rows: BatchRows, now: float) -> None:
        """Write a new run's first decision, held by nobody (any worker claims it, woken by the
        notice): its rows, what it delivers to other runs' inboxes, and the notifications it
        causes (a run that fails at once, in its first step's template)."""
        await self._write_rows(conn, rows, now)
        await self._notify(conn, rows.notice(now))

    async def _write_rows(self, conn: Conn, rows: BatchRows, now: float) -> None:
        """A batch's runs, steps and attempts, its deliveries to other runs' inboxes (which wake
        them) and its notifications, in the caller's transaction."""
        if rows.runs:
            await conn.executemany(_UPSERT_RUN, rows.runs)
        if rows.steps:
            await conn.executemany(_UPSERT_STEP, rows.steps)
        if rows.attempts:
            await conn.executemany(_UPSERT_ATTEMPT, rows.attempts)
        for run_id, event in rows.deliveries:
            await conn.execute(_INBOX, run_id, event, None, now)
            await conn.execute(_WAKE, now, run_id)
        if rows.outbox:
            await conn.executemany(INSERT_OUTBOX, [(*o, now, now) for o in rows.outbox])
        if rows.logs:
            await conn.executemany(step_logs.POSTGRES_INSERT, [(*g, now) for g in rows.logs])

    async def append_logs(
        self, run_id: str, step: str, attempt: int, lines: Sequence[LogLine], now: float
    ) -> bool:
        key = f"logs:{run_id}:{step}:{attempt}"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
            count = await conn.fetchval(step_logs.POSTGRES_COUNT, run_id, step, attempt)
            rows, kept = step_logs.capped(count, lines, now)
            if rows:
                text = step_logs.encode(rows)
                await conn.execute(
                    step_logs.POSTGRES_INSERT, run_id, step, attempt, text, len(rows), now
                )
        return kept

    async def get_logs(
        self,
        run_id: str,
        step: str | None = None,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 200,
    ) -> list[LogChunk]:
        sql, params = step_logs.select(run_id, step, attempt, after, limit, pg=True)
        return [step_logs.chunk(r) for r in await self.pool.fetch(sql, *params)]

    async def start_child(
        self, decision: Decision, parent: str, limits: RunLimits
    ) -> tuple[str, str]:
        now = time.time()
        rows = BatchRows([decision], None, now)  # held by nobody: any worker claims it

        async def write() -> None:
            await self.write_new(conn, rows, now)

        async with self.pool.acquire() as conn, conn.transaction():
            return await postgres_lineage.start_child(conn, decision.run_id, parent, limits, write)

    async def cancel_runs(
        self,
        runs: RunFilter,
        reason: str,
        now: float,
        report: Callable[[str, str, Any], dict[str, Any]],
    ) -> tuple[list[str], list[str]]:
        for attempt in range(5):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    ids, told = await postgres_lineage.cancel(conn, runs, reason, now, report)
                    if ids:  # engines holding any of them let them go (see trees.stopped)
                        await self._notify(conn, {"x": 1, "i": told, "w": now})
                return ids, told
            except asyncpg.DeadlockDetectedError:  # with a lease renewal, say: nothing was written
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def retry_runs(self, runs: RunFilter, event: dict[str, Any], now: float) -> list[str]:
        async with self.pool.acquire() as conn, conn.transaction():
            ids = await postgres_lineage.retry(conn, runs, event, now)
            if ids:
                await self._notify(conn, {"w": now})
        return ids

    async def not_owned(self, run_ids: Sequence[str]) -> list[str]:
        async with self.pool.acquire() as conn:
            return await postgres_lineage.not_owned(conn, self.owner, run_ids)

    # -- schedules ------------------------------------------------------------------------------

    async def add_schedule(self, workflow: str, first: float | None, now: float) -> None:
        await self.pool.execute(
            "INSERT INTO schedules (workflow, next_start, paused, updated_at) "
            "VALUES ($1, $2, FALSE, $3) ON CONFLICT (workflow) DO NOTHING",
            workflow,
            first,
            now,
        )

    async def move_schedule(self, workflow: str, next_start: float | None, now: float) -> None:
        await self.pool.execute(
            "UPDATE schedules SET next_start = $1, updated_at = $2 WHERE workflow = $3",
            next_start,
            now,
            workflow,
        )

    async def latest_version(self, name: str) -> int | None:
        value = await self.pool.fetchval("SELECT MAX(version) FROM workflows WHERE name = $1", name)
        return None if value is None else int(value)

    async def drop_schedule(self, workflow: str) -> None:
        await self.pool.execute("DELETE FROM schedules WHERE workflow = $1", workflow)

    async def list_schedules(self) -> list[ScheduleRow]:
        rows = await self.pool.fetch(
            "SELECT workflow, next_start, paused, updated_at FROM schedules ORDER BY workflow"
        )
        return [ScheduleRow(r[0], r[1], r[2], r[3]) for r in rows]

    async def pause_schedule(self, workflow: str, paused: bool, now: float) -> bool:
        result = await self.pool.execute(
            "UPDATE schedules SET paused = $1, updated_at = $2 WHERE workflow = $3",
            paused,
            now,
            workflow,
        )
        return int(result.rsplit(" ", 1)[-1]) > 0

    async def fire_schedule(
        self,
        workflow: str,
        expected: float,
        following: float | None,
        decision: Decision,
        max_active: int | None,
        now: float,
    ) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            # SKIP LOCKED: another engine firing this schedule now has it; this one moves on.
            row = await conn.fetchrow(
                "SELECT next_start, paused FROM schedules WHERE workflow = $1 "
                "FOR UPDATE SKIP LOCKED",
                workflow,
            )
            if row is None or row[1] or row[0] != expected:
                return "moved"
            if max_active is not None:
                active = await conn.fetchval(
                    "SELECT COUNT(*) FROM runs WHERE workflow = $1 "
                    "AND status IN ('pending', 'running', 'waiting')",
                    workflow,
                )
                if active >= max_active:
                    return "busy"
            owner = await conn.fetchval("SELECT workflow FROM runs WHERE id = $1", decision.run_id)
            if owner is None:
                # Held by nobody: any worker claims it, woken by the notice.
                await self.write_new(conn, BatchRows([decision], None, now), now)
            await conn.execute(
                "UPDATE schedules SET next_start = $1, updated_at = $2 WHERE workflow = $3",
                following,
                now,
                workflow,
            )
            return "fired" if owner in (None, workflow) else "taken"

    async def start_once(
        self, decision: Decision, key: starts.StartKey | None, now: float
    ) -> starts.StartOutcome:
        return await starts.postgres_start_once(self, decision, key, now)

    async def start_triggered(
        self, decision: Decision, receipt: receipts.Receipt, now: float
    ) -> receipts.Received:
        return await receipts.postgres_start(self, decision, receipt, now)

    async def purge_start_keys(self, now: float) -> int:
        done = await self.pool.execute(starts.purge_sql("$1"), now)
        return int(done.split()[-1])

    # -- notifications --------------------------------------------------------------------------

    async def record_notification(self, row: NotificationRow) -> None:
        await self.pool.execute(INSERT_NOTIFICATION, *notification_params(row))

    async def list_notifications(self, run_id: str) -> list[NotificationRow]:
        rows = await self.pool.fetch(
            "SELECT run_id, event, channel, target, ok, tries, error, created_at, delivery_id "
            "FROM notifications WHERE run_id = $1 ORDER BY id",
            run_id,
        )
        return [NotificationRow(*r) for r in rows]

    # -- sessions and the audit log (see access.py) ---------------------------------------------

    async def add_session(self, row: SessionRow) -> None:
        await access.pg_add_session(self.pool, row)

    async def get_session(self, key: str) -> SessionRow | None:
        return await access.pg_get_session(self.pool, key)

    async def drop_session(self, key: str) -> None:
        await access.pg_drop_session(self.pool, key)

    async def add_audit(self, row: AuditRow) -> None:
        await access.pg_add_audit(self.pool, row)

    async def prune_audit(self, before: float, limit: int) -> int:
        return await access.pg_prune_audit(self.pool, before, limit)

    async def list_audit(
        self, since: float | None, token: str | None, before: int | None, limit: int
    ) -> list[AuditRow]:
        return await access.pg_list_audit(self.pool, since, token, before, limit)
