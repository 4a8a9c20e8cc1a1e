"""PostgreSQL through asyncpg: the same tables and rows as SQLite, for one engine or many processes.

`postgresql://user@host:5432/db` (also `postgres://`), with `?schema=name` to keep Legato's tables in
their own schema (created if missing). A batch of decisions is one transaction, as with SQLite; new
workflow versions are numbered under an advisory lock, so two processes registering at once cannot
take the same number.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from legato.engine.state import ACTIVE_RUN, Attempt, Decision, RunInfo, RunState, StepState
from legato.errors import LegatoError
from legato.model.service import Service
from legato.store.migrations import Migration, to_apply
from legato.store.protocol import KeptEvent, WorkflowRecord
from legato.store.rows import (
    RUN_COLUMNS,
    STEP_COLUMNS,
    decision_rows,
    dump,
    load,
    run_info,
    step_state,
    workflow_record,
)

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
MIGRATIONS: list[Migration] = [(1, V1), (2, V2)]
SCHEMA_VERSION = MIGRATIONS[-1][0]
_UPSERT_RUN = """
INSERT INTO runs (id, workflow, version, status, input, output, error, created_at, started_at,
                  finished_at, deadline)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output,
    error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at,
    deadline = excluded.deadline
"""
_UPSERT_STEP = """
INSERT INTO steps (run_id, name, status, attempt, tries, started_at, finished_at, next_at,
                   request, output, error, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (run_id, name) DO UPDATE SET status = excluded.status, attempt = excluded.attempt,
    tries = excluded.tries, started_at = excluded.started_at, finished_at = excluded.finished_at,
    next_at = excluded.next_at, request = excluded.request, output = excluded.output,
    error = excluded.error, reason = excluded.reason
"""
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


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._dsn, self.schema = _connection(url)
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
            raise LegatoError(f"cannot connect to PostgreSQL at {self.url}: {exc}") from exc
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
            raise LegatoError(f"cannot connect to PostgreSQL at {self.url}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- writes -------------------------------------------------------------------------------

    async def commit(self, decisions: Sequence[Decision]) -> None:
        runs, steps, attempts, consumed = decision_rows(decisions)
        if not (runs or steps or attempts or consumed):
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if consumed:
                await conn.executemany("DELETE FROM events WHERE id = $1", consumed)
            if runs:
                await conn.executemany(_UPSERT_RUN, runs)
            if steps:
                await conn.executemany(_UPSERT_STEP, steps)
            if attempts:
                await conn.executemany(_UPSERT_ATTEMPT, attempts)

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
        await self.pool.execute(
            "INSERT INTO services VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE "
            "SET spec = excluded.spec, updated_at = excluded.updated_at",
            service.name,
            dump(service.to_dict()),
            time.time(),
        )

    async def delete_service(self, name: str) -> bool:
        result = await self.pool.execute("DELETE FROM services WHERE name = $1", name)
        return bool(result.endswith(" 1"))

    async def keep_event(self, event: KeptEvent) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM events WHERE expires_at <= $1", event.created_at)
            await conn.execute(
                "INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6)",
                event.id,
                event.type,
                event.key,
                dump(event.data),
                event.created_at,
                event.expires_at,
            )

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

    async def kept_events(self, type: str, key: str, now: float) -> list[KeptEvent]:
        rows = await self.pool.fetch(
            "SELECT id, type, key, data, created_at, expires_at FROM events "
            "WHERE type = $1 AND key = $2 AND expires_at > $3 ORDER BY id",
            type,
            key,
            now,
        )
        return [KeptEvent(r[0], r[1], r[2], load(r[3]), r[4], r[5]) for r in rows]

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
        return sorted((Service.from_dict(load(r[0])) for r in rows), key=lambda s: s.name)

    async def load_active_runs(self) -> list[RunState]:
        async with self.pool.acquire() as conn:
            runs = await conn.fetch(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE status = ANY($1::text[])",
                sorted(ACTIVE_RUN),
            )
            ids = [r[0] for r in runs]
            steps = await conn.fetch(
                f"SELECT run_id, {STEP_COLUMNS} FROM steps WHERE run_id = ANY($1::text[])", ids
            )
        by_run: dict[str, dict[str, StepState]] = {i: {} for i in ids}
        for s in steps:
            state = step_state(tuple(s)[1:])
            by_run[s[0]][state.name] = state
        return [RunState(run_info(tuple(r)), by_run[r[0]]) for r in runs]

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
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit)
        sql += f" ORDER BY id DESC LIMIT ${len(params)}"
        rows = await self.pool.fetch(sql, *params)
        return [run_info(tuple(r)) for r in rows]
