"""The embedded SQLite store: one file in WAL mode, one connection, a batch of decisions per transaction.

`synchronous=NORMAL` (the default) survives any process crash, and its commits are fast enough to run on
the event loop itself; `?synchronous=full` also survives power loss, and then every call goes to one
dedicated thread so the fsync does not stall the loop.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

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

T = TypeVar("T")

# Each migration brings the schema to its version; a new database runs them all (see migrations.py).
V1 = """
CREATE TABLE IF NOT EXISTS legato_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, spec TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    input TEXT NOT NULL, output TEXT, error TEXT, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, deadline REAL);
CREATE INDEX IF NOT EXISTS runs_active ON runs (status) WHERE status IN ('pending', 'running', 'waiting');
CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, id);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, id);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, attempt INTEGER NOT NULL,
    tries INTEGER NOT NULL, started_at REAL, finished_at REAL, next_at REAL, request TEXT,
    output TEXT, error TEXT, reason TEXT, PRIMARY KEY (run_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
    started_at REAL, finished_at REAL, request TEXT, output TEXT, error TEXT,
    PRIMARY KEY (run_id, step, attempt)) WITHOUT ROWID;
"""
V2 = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, key TEXT NOT NULL, data TEXT,
    created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_key ON events (type, key, id);
"""
MIGRATIONS: list[Migration] = [(1, V1), (2, V2)]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_UPSERT_RUN = """
INSERT INTO runs (id, workflow, version, status, input, output, error, created_at, started_at,
                  finished_at, deadline)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output,
    error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at,
    deadline = excluded.deadline
"""
_UPSERT_STEP = """
INSERT OR REPLACE INTO steps (run_id, name, status, attempt, tries, started_at, finished_at, next_at,
                              request, output, error, reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_ATTEMPT = """
INSERT OR REPLACE INTO attempts (run_id, step, attempt, status, started_at, finished_at, request,
                                 output, error)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def _statements(script: str) -> list[str]:
    """A migration's statements (its SQL has no ';' inside a statement)."""
    return [part.strip() for part in script.split(";") if part.strip()]


def _has_meta(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'legato_meta'").fetchall())


def sqlite_path(url: str) -> tuple[str, dict[str, list[str]]]:
    if "://" not in url:
        return url, {}
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise LegatoError(f"not a sqlite URL: {url!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise LegatoError("sqlite URL needs a file path: sqlite:///legato.db")
    return path, parse_qs(parts.query)


class SQLiteStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = sqlite_path(url)
        sync = options.get("synchronous", ["normal"])[0].upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise LegatoError(
                f"synchronous must be off, normal, full or extra, not {sync.lower()!r}"
            )
        self.synchronous = sync
        # Without an fsync per commit, a batch commits in well under a millisecond: doing it on the
        # event loop beats handing it to a thread (measured). With FULL, the fsync goes to a thread.
        self.inline = sync in ("OFF", "NORMAL")
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self.migrate = (
            False  # upgrade an older schema on open (`legato migrate`, `serve --migrate`)
        )
        self.target: int | None = None  # the version to stop at (tests build old databases)
        self.found_version = 0
        self.version = 0

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise LegatoError("the store is not open")
        if self.inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legato-sqlite")
        await self._call(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        self.version = self._migrate(conn)
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> int:
        """Bring the schema up to date (as allowed) in one write transaction, reading the version
        inside it, so two processes opening a new database cannot both apply (or lower) it."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = (
                conn.execute(
                    "SELECT value FROM legato_meta WHERE key = 'schema_version'"
                ).fetchall()
                if _has_meta(conn)
                else []
            )
            current = int(found[0][0]) if found else 0
            self.found_version = current
            plan = to_apply(MIGRATIONS, current, self.url, allowed=self.migrate, target=self.target)
            for version, sql in plan:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR REPLACE INTO legato_meta VALUES ('schema_version', ?)",
                    (str(version),),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return plan[-1][0] if plan else current

    async def close(self) -> None:
        if self._pool is None:
            return
        await self._call(self._close)
        self._pool.shutdown(wait=True)
        self._pool = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- writes -------------------------------------------------------------------------------

    async def commit(self, decisions: Sequence[Decision]) -> None:
        runs, steps, attempts, consumed = decision_rows(decisions)
        if runs or steps or attempts or consumed:
            await self._call(self._write, runs, steps, attempts, consumed)

    def _write(
        self,
        runs: list[tuple[Any, ...]],
        steps: list[tuple[Any, ...]],
        attempts: list[tuple[Any, ...]],
        consumed: list[tuple[str]],
    ) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if consumed:  # a kept event goes in the same transaction as the step it completed
                conn.executemany("DELETE FROM events WHERE id = ?", consumed)
            if runs:
                conn.executemany(_UPSERT_RUN, runs)
            if steps:
                conn.executemany(_UPSERT_STEP, steps)
            if attempts:
                conn.executemany(_INSERT_ATTEMPT, attempts)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def save_workflow(self, name: str, digest: str, spec: dict[str, Any]) -> WorkflowRecord:
        return await self._call(self._save_workflow, name, digest, spec)

    def _save_workflow(self, name: str, digest: str, spec: dict[str, Any]) -> WorkflowRecord:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT version, digest, spec, created_at FROM workflows WHERE name = ? "
                "ORDER BY version DESC LIMIT 1",
                (name,),
            ).fetchone()
            if row is not None and row[1] == digest:
                conn.execute("COMMIT")
                return WorkflowRecord(name, row[0], row[1], orjson.loads(row[2]), row[3])
            version = 1 if row is None else row[0] + 1
            now = time.time()
            conn.execute(
                "INSERT INTO workflows VALUES (?, ?, ?, ?, ?)",
                (name, version, digest, dump(spec), now),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return WorkflowRecord(name, version, digest, spec, now, created=True)

    async def put_service(self, service: Service) -> None:
        await self._call(
            self._execute,
            "INSERT OR REPLACE INTO services VALUES (?, ?, ?)",
            (service.name, dump(service.to_dict()), time.time()),
        )

    async def delete_service(self, name: str) -> bool:
        return await self._call(self._execute, "DELETE FROM services WHERE name = ?", (name,)) > 0

    def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        return self.conn.execute(sql, params).rowcount

    # -- reads --------------------------------------------------------------------------------

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowRecord | None:
        if version is None:
            rows = await self._call(
                self._fetch,
                "SELECT name, version, digest, spec, created_at FROM "
                "workflows WHERE name = ? ORDER BY version DESC LIMIT 1",
                (name,),
            )
        else:
            rows = await self._call(
                self._fetch,
                "SELECT name, version, digest, spec, created_at FROM "
                "workflows WHERE name = ? AND version = ?",
                (name, version),
            )
        return workflow_record(rows[0]) if rows else None

    async def list_workflows(self) -> list[WorkflowRecord]:
        rows = await self._call(
            self._fetch,
            "SELECT w.name, w.version, w.digest, w.spec, w.created_at FROM workflows w "
            "JOIN (SELECT name, MAX(version) AS v FROM workflows GROUP BY name) m "
            "ON w.name = m.name AND w.version = m.v ORDER BY w.name",
        )
        return [workflow_record(r) for r in rows]

    async def keep_event(self, event: KeptEvent) -> None:
        await self._call(
            self._execute_many,
            [
                ("DELETE FROM events WHERE expires_at <= ?", (event.created_at,)),
                (
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        event.id,
                        event.type,
                        event.key,
                        dump(event.data),
                        event.created_at,
                        event.expires_at,
                    ),
                ),
            ],
        )

    def _execute_many(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                conn.execute(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def kept_events(self, type: str, key: str, now: float) -> list[KeptEvent]:
        rows = await self._call(
            self._fetch,
            "SELECT id, type, key, data, created_at, expires_at FROM events "
            "WHERE type = ? AND key = ? AND expires_at > ? ORDER BY id",
            (type, key, now),
        )
        return [KeptEvent(r[0], r[1], r[2], load(r[3]), r[4], r[5]) for r in rows]

    async def secret(self, name: str) -> str:
        return await self._call(self._secret, name)

    def _secret(self, name: str) -> str:
        key = f"secret:{name}"
        self.conn.execute(
            "INSERT OR IGNORE INTO legato_meta VALUES (?, ?)", (key, secrets.token_urlsafe(32))
        )
        return str(self._fetch("SELECT value FROM legato_meta WHERE key = ?", (key,))[0][0])

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        rows = await self._call(
            self._fetch,
            "SELECT name, version, digest, spec, created_at FROM workflows WHERE name = ? "
            "ORDER BY version",
            (name,),
        )
        return [workflow_record(r) for r in rows]

    async def list_services(self) -> list[Service]:
        rows = await self._call(self._fetch, "SELECT spec FROM services ORDER BY name")
        return [Service.from_dict(orjson.loads(r[0])) for r in rows]

    async def load_active_runs(self) -> list[RunState]:
        return await self._call(self._load_active)

    def _load_active(self) -> list[RunState]:
        marks = ", ".join("?" for _ in ACTIVE_RUN)
        rows = self._fetch(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE status IN ({marks})", tuple(sorted(ACTIVE_RUN))
        )
        return [RunState(run_info(r), self._steps(r[0])) for r in rows]

    def _steps(self, run_id: str) -> dict[str, StepState]:
        rows = self._fetch(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ?", (run_id,))
        return {r[0]: step_state(r) for r in rows}

    async def get_run(self, run_id: str) -> RunState | None:
        return await self._call(self._get_run, run_id)

    def _get_run(self, run_id: str) -> RunState | None:
        rows = self._fetch(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        return RunState(run_info(rows[0]), self._steps(run_id))

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        """Failed and cancelled attempts are rows of `attempts`; a succeeded attempt lives only in its
        step's row (it is the step's last), which spares a write per step on the hot path."""
        rows = await self._call(
            self._fetch,
            "SELECT run_id, step, attempt, status, started_at, finished_at, request, "
            "output, error FROM attempts WHERE run_id = ? UNION ALL "
            "SELECT run_id, name, attempt, status, started_at, finished_at, request, output, error "
            "FROM steps WHERE run_id = ? AND status = 'succeeded' AND attempt > 0 "
            "ORDER BY 5, 2, 3",
            (run_id, run_id),
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
        where, params = [], []
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = await self._call(self._fetch, sql, (*params, limit))
        return [run_info(r) for r in rows]
