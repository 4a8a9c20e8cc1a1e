"""The embedded SQLite store: one file in WAL mode, one connection, a batch of decisions per transaction.

`synchronous=NORMAL` (the default) survives any process crash, and its commits are fast enough to run on
the event loop itself; `?synchronous=full` also survives power loss, and then every call goes to one
dedicated thread so the fsync does not stall the loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from legato.engine.lineage import RunFilter, RunLimits
from legato.engine.outcome import LogLine
from legato.engine.state import Attempt, Decision, RunInfo, RunState, StepState
from legato.errors import LegatoError
from legato.model.service import Service
from legato.store import access, receipts, sqlite_lineage, starts, step_logs
from legato.store.access import AuditRow, SessionRow
from legato.store.migrations import Migration, to_apply
from legato.store.outbox_targets import receiver
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
from legato.store.sqlite_outbox import (
    INSERT_NOTIFICATION,
    INSERT_OUTBOX,
    V9,
    SQLiteOutbox,
    notification_params,
)
from legato.store.step_logs import LogChunk

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
# Version 3: runs live in the store while they wait. An engine claims a run (owner, lease) while it
# has work; a parked run has its next due time indexed (wake_at), a listening step its correlation
# (listen_key), and what reaches a run from outside waits in its inbox.
V3 = """
ALTER TABLE runs ADD COLUMN parent TEXT;
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until REAL;
ALTER TABLE runs ADD COLUMN wake_at REAL;
UPDATE runs SET owner = '', lease_until = 0 WHERE status IN ('pending', 'running', 'waiting');
UPDATE runs SET parent = (SELECT json_array(s.run_id, s.name, s.attempt) FROM steps s
    WHERE s.status = 'waiting' AND s.reason = 'child'
    AND json_extract(s.request, '$.run_id') = runs.id)
    WHERE status IN ('pending', 'running', 'waiting');
CREATE INDEX IF NOT EXISTS runs_wake ON runs (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner, lease_until) WHERE owner IS NOT NULL;
ALTER TABLE steps ADD COLUMN listen_key TEXT;
UPDATE steps SET listen_key = json_array(json_extract(request, '$.event'),
    json_extract(request, '$.key')) WHERE status = 'waiting' AND reason = 'event';
CREATE INDEX IF NOT EXISTS steps_listening ON steps (listen_key) WHERE listen_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, event TEXT NOT NULL,
    dedupe TEXT UNIQUE, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_by_run ON inbox (run_id, id);
"""
# Version 4: scheduled workflows. One row per workflow with a schedule: the start of its next
# interval to run, moved on in the same transaction that inserts the interval's run. And what
# became of each notification (email, webhook) about a run.
V4 = """
CREATE TABLE IF NOT EXISTS schedules (
    workflow TEXT PRIMARY KEY, next_start REAL, paused INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, event TEXT NOT NULL,
    channel TEXT NOT NULL, target TEXT NOT NULL, ok INTEGER NOT NULL, tries INTEGER NOT NULL,
    error TEXT, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS notifications_by_run ON notifications (run_id, id);
"""
# Version 6: Idempotency-Keys of run starts (see starts.py).
# Version 7: secrets that templates read as `{{ secrets.NAME }}`, set through the API or the CLI.
V7 = """
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""
MIGRATIONS: list[Migration] = [
    (1, V1),
    (2, V2),
    (3, V3),
    (4, V4),
    (5, sqlite_lineage.V5),
    (6, starts.SQLITE_SCHEMA),
    (7, V7),
    (8, access.SQLITE_V8),
    (9, V9),
    (10, receipts.SQLITE_SCHEMA),
    (11, step_logs.SQLITE_V11),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_UPSERT_RUN = """
INSERT INTO runs (id, workflow, version, status, input, output, error, created_at, started_at,
                  finished_at, deadline, parent, owner, lease_until, wake_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET status = excluded.status, output = excluded.output,
    error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at,
    deadline = excluded.deadline,
    owner = CASE WHEN excluded.status IN ('pending', 'running', 'waiting') THEN owner END,
    lease_until = CASE WHEN excluded.status IN ('pending', 'running', 'waiting')
        THEN lease_until END,
    wake_at = CASE WHEN excluded.status IN ('pending', 'running', 'waiting') THEN wake_at
        ELSE (SELECT MIN(created_at) FROM inbox WHERE inbox.run_id = runs.id) END
"""
_UPSERT_STEP = """
INSERT OR REPLACE INTO steps (run_id, name, status, attempt, tries, started_at, finished_at, next_at,
                              request, output, error, reason, listen_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# A run's wake time only moves earlier while it waits: MIN ignores neither NULL, so COALESCE does.
_WAKE = "UPDATE runs SET wake_at = COALESCE(MIN(wake_at, ?1), ?1) WHERE id = ?2"
_CLAIMED = "UPDATE runs SET owner = ?, lease_until = ?, wake_at = NULL WHERE id = ?"
# Due at its next time, or at once if its inbox holds something.
_PENDING = "(SELECT MIN(created_at) FROM inbox WHERE inbox.run_id = runs.id)"
_RELEASE = (
    "UPDATE runs SET owner = NULL, lease_until = NULL, "
    f"wake_at = COALESCE(MIN(?1, {_PENDING}), {_PENDING}, ?1) WHERE id = ?2 AND owner IS ?3"
)
_HEARD = "UPDATE steps SET listen_key = NULL WHERE run_id = ? AND name = ?"
_INBOX = "INSERT INTO inbox (run_id, event, dedupe, created_at) VALUES (?, ?, ?, ?)"
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


def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO legato_meta VALUES ('probe', ?)", (repr(time.time()),))
    conn.execute("SELECT value FROM legato_meta WHERE key = 'probe'").fetchall()


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


def _chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class SQLiteStore(SQLiteOutbox):
    shared = False  # one engine per file (see Store.shared)

    def __init__(self, url: str) -> None:
        self.url = url
        self.owner: str | None = None
        self.lease = 30.0
        self.path, options = sqlite_path(url)
        sync = options.get("synchronous", ["normal"])[0].upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise LegatoError(
                f"synchronous must be off, normal, full or extra, not {sync.lower()!r}"
            )
        self.synchronous = sync
        # A testing aid: `?max_page_count=N` caps the file at N pages, a disk that fills up.
        self.max_page_count = int(options.get("max_page_count", ["0"])[0])
        # Without an fsync per commit, a batch commits in well under a millisecond: doing it on the
        # event loop beats handing it to a thread (measured). With FULL, the fsync goes to a thread.
        self.inline = sync in ("OFF", "NORMAL")
        self._pool: ThreadPoolExecutor | None = None
        self._queued: set[Future[Any]] = set()  # work handed to `_pool`, not yet ended
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None
        self.migrate = (
            False  # upgrade an older schema on open (`legato migrate`, `serve --migrate`)
        )
        self.target: int | None = None  # the version to stop at (tests build old databases)
        self.found_version = 0
        self.version = 0
        self._fenced_until = 0.0  # commits until then check they still own their runs

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise LegatoError("the store is not open")
        if self.inline and not self._queued:
            return fn(*args)
        return await self._in_thread(fn, *args)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the store's one thread. While anything is queued there, inline calls queue
        behind it (see `_call`): the connection is never used by two threads at once, and calls
        keep their order. Work over many rows (a tree's cancel, a bulk action) always goes there,
        so the event loop keeps answering meanwhile."""
        if self._pool is None:
            raise LegatoError("the store is not open")
        job = self._pool.submit(fn, *args)
        self._queued.add(job)
        job.add_done_callback(self._queued.discard)  # once `fn` has returned (or never will run)
        return await asyncio.wrap_future(job)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legato-sqlite")
        try:
            await self._call(self._open)
        except BaseException:
            self._pool.shutdown(wait=True)
            self._pool = None  # not open: a later open() tries again
            raise

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self.owner is not None:
                self._lock_file()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.execute("PRAGMA busy_timeout=10000")
                # The outbox claim counts sends per receiver with the notifier's own key.
                conn.create_function("legato_receiver", 1, receiver, deterministic=True)
                if self.max_page_count:
                    conn.execute(f"PRAGMA max_page_count={self.max_page_count}")
                self.version = self._migrate(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._close()  # a refused open leaves the file to the next engine, lock included
            raise
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

    def _lock_file(self) -> None:
        """One engine per file: a second would take the first one's runs for a dead process's."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LegatoError(
                f"another Legato engine is using {self.path}: a SQLite file belongs to one "
                "process (stop it, or share a PostgreSQL database between processes)"
            ) from None
        self._lock = fd

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    async def probe(self) -> None:
        await self._call(self._transaction, _probe)

    # -- writes -------------------------------------------------------------------------------

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one write transaction (BEGIN IMMEDIATE: writers queue, none deadlocks)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            if conn.in_transaction:  # a full disk (SQLITE_FULL) has rolled it back already
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def commit(self, decisions: Sequence[Decision]) -> Committed:
        now = time.time()
        rows = BatchRows(decisions, self.owner, now + self.lease)
        if rows.empty:
            return Committed()  # effects only (a resumed run): nothing to write
        # One engine per file: nobody else can have claimed its runs.
        return await self._call(self._transaction, lambda conn: self._write(conn, rows, now))

    def _write(self, conn: sqlite3.Connection, rows: BatchRows, now: float) -> Committed:
        lost: frozenset[str] = frozenset()
        if rows.existing and self.owner is not None and time.monotonic() < self._fenced_until:
            # Decisions queued before a set-wise cancel took their runs (its engine let go of them
            # at once, so later ones cannot come): they write nothing.
            lost = frozenset(sqlite_lineage.not_owned(conn, self.owner, rows.existing))
            rows = rows.only(set(lost))
        if rows.inbox_done:  # first: an ended run's wake time counts only what is left
            conn.executemany("DELETE FROM inbox WHERE id = ?", rows.inbox_done)
        if rows.runs:
            conn.executemany(_UPSERT_RUN, rows.runs)
        if rows.steps:
            conn.executemany(_UPSERT_STEP, rows.steps)
        if rows.attempts:
            conn.executemany(_INSERT_ATTEMPT, rows.attempts)
        for run_id, event in rows.deliveries:
            conn.execute(_INBOX, (run_id, event, None, now))
            conn.execute(_WAKE, (now, run_id))
        if rows.outbox:
            conn.executemany(INSERT_OUTBOX, [(*o, now, now) for o in rows.outbox])
        if rows.logs:
            conn.executemany(step_logs.SQLITE_INSERT, [(*g, now) for g in rows.logs])
        due = False
        for run, wake in rows.releases.items():
            for (at,) in conn.execute(_RELEASE + " RETURNING wake_at", (wake, run, self.owner)):
                due = due or (at is not None and at <= now)
        return Committed(lost, due)

    # -- claims and inboxes -------------------------------------------------------------------

    async def claim(self, now: float, limit: int) -> list[Claimed]:
        return await self._call(self._transaction, lambda conn: self._claim(conn, now, limit))

    def _claim(self, conn: sqlite3.Connection, now: float, limit: int) -> list[Claimed]:
        found = conn.execute(
            "SELECT id, owner FROM runs WHERE owner IS NULL AND wake_at <= ? "
            "UNION ALL SELECT id, owner FROM runs WHERE owner IS NOT NULL AND owner IS NOT ? "
            "LIMIT ?",
            (now, self.owner, limit),
        ).fetchall()
        if not found:
            return []
        until = now + self.lease
        conn.executemany(_CLAIMED, [(self.owner, until, r[0]) for r in found])
        ids = [r[0] for r in found]
        states = self._states(conn, ids)
        inbox = self._inbox(conn, ids)
        return [
            Claimed(states[run_id], inbox.get(run_id, []), owner is not None)
            for run_id, owner in found
            if run_id in states
        ]

    def _states(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, RunState]:
        states: dict[str, RunState] = {}
        for part in _chunks(ids):
            marks = ", ".join("?" for _ in part)
            for r in conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({marks})", part):
                states[r[0]] = RunState(run_info(r))
            for r in conn.execute(
                f"SELECT run_id, {STEP_COLUMNS} FROM steps WHERE run_id IN ({marks})", part
            ):
                states[r[0]].steps[r[1]] = step_state(r[1:])
        return states

    def _inbox(self, conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, list[InboxRow]]:
        inbox: dict[str, list[InboxRow]] = {}
        for part in _chunks(ids):
            marks = ", ".join("?" for _ in part)
            for r in conn.execute(
                f"SELECT id, run_id, event FROM inbox WHERE run_id IN ({marks}) ORDER BY id", part
            ):
                inbox.setdefault(r[1], []).append(InboxRow(r[0], r[1], orjson.loads(r[2])))
        return inbox

    async def inbox(self, run_ids: Sequence[str]) -> list[InboxRow]:
        found = await self._call(self._inbox, self.conn, run_ids)
        return sorted((row for rows in found.values() for row in rows), key=lambda r: r.id)

    async def renew(self, now: float, run_ids: Sequence[str]) -> int:
        def work(conn: sqlite3.Connection) -> int:
            count = 0
            for part in _chunks(run_ids):
                marks = ", ".join("?" for _ in part)
                count += conn.execute(
                    f"UPDATE runs SET lease_until = ? WHERE owner = ? AND id IN ({marks})",
                    (now + self.lease, self.owner, *part),
                ).rowcount
            return count

        return await self._call(self._transaction, work)

    async def hand_back(self, run_ids: Sequence[str], after: float) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE runs SET owner = '', lease_until = ? WHERE id = ? AND owner = ?",
                [(after, run_id, self.owner) for run_id in run_ids],
            )

        await self._call(self._transaction, work)

    async def release_all(self, now: float) -> None:
        # Held by nobody: the next engine resumes each in full (see Store.release_all).
        await self._call(
            self._execute,
            "UPDATE runs SET owner = '', lease_until = 0 WHERE owner = ?",
            (self.owner,),
        )

    async def next_wake(self) -> float | None:
        rows = await self._call(
            self._fetch, "SELECT MIN(wake_at) FROM runs WHERE owner IS NULL AND wake_at IS NOT NULL"
        )
        return rows[0][0] if rows else None

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
        text = dump(event)

        def work(conn: sqlite3.Connection) -> Delivered:
            found = conn.execute(
                "SELECT status, owner FROM runs WHERE id = ?", (run_id,)
            ).fetchall()
            if not found:
                return Delivered(False)
            at = None
            if step is not None:
                s = conn.execute(
                    "SELECT status, attempt, reason FROM steps WHERE run_id = ? AND name = ?",
                    (run_id, step),
                ).fetchall()
                at = (s[0][0], s[0][1], s[0][2]) if s else None
            target = Target(found[0][0], found[0][1], at)
            if accept is not None and not accept(target):
                return Delivered(False, target)
            if (
                dedupe is not None
                and conn.execute("SELECT 1 FROM inbox WHERE dedupe = ?", (dedupe,)).fetchall()
            ):
                return Delivered(False, target, duplicate=True)
            conn.execute(_INBOX, (run_id, text, dedupe, now))
            conn.execute(_WAKE, (now, run_id))
            return Delivered(True, target, runs=[run_id])

        return await self._call(self._transaction, work)

    async def publish(
        self,
        type: str,
        key: str,
        now: float,
        make: Callable[[str, int], dict[str, Any]],
        keep: KeptEvent | None,
    ) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            listeners = conn.execute(
                "SELECT run_id, name, attempt FROM steps WHERE listen_key = ? ORDER BY run_id",
                (listen_key(type, key),),
            ).fetchall()
            for run_id, name, attempt in listeners:
                conn.execute(_INBOX, (run_id, dump(make(name, attempt)), None, now))
                conn.execute(_WAKE, (now, run_id))
                # Each listening attempt takes one event: the next one is kept, or goes to the
                # attempt that listens after it.
                conn.execute(_HEARD, (run_id, name))
            if not listeners and keep is not None:
                conn.execute("DELETE FROM events WHERE expires_at <= ?", (now,))
                conn.execute(
                    f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        keep.id,
                        keep.type,
                        keep.key,
                        dump(keep.data),
                        keep.created_at,
                        keep.expires_at,
                    ),
                )
            return sorted({r[0] for r in listeners})

        return await self._call(self._transaction, work)

    async def take_kept(
        self,
        type: str,
        key: str,
        now: float,
        run_id: str,
        step: str,
        make: Callable[[KeptEvent], dict[str, Any]],
    ) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE type = ? AND key = ? AND expires_at > ? "
                "ORDER BY id LIMIT 1",
                (type, key, now),
            ).fetchall()
            if not rows:
                return False
            r = rows[0]
            kept = KeptEvent(r[0], r[1], r[2], load(r[3]), r[4], r[5])
            conn.execute("DELETE FROM events WHERE id = ?", (kept.id,))
            conn.execute(_INBOX, (run_id, dump(make(kept)), None, now))
            conn.execute(_WAKE, (now, run_id))
            conn.execute(_HEARD, (run_id, step))
            return True

        return await self._call(self._transaction, work)

    async def keep_listening(self) -> bool:
        return False

    async def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """One engine per file: it hears its own changes directly."""

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

    async def put_user_secret(self, name: str, value: str) -> None:
        sql = "INSERT OR REPLACE INTO secrets VALUES (?, ?, ?)"
        await self._call(self._execute, sql, (name, value, time.time()))

    async def delete_user_secret(self, name: str) -> bool:
        return await self._call(self._execute, "DELETE FROM secrets WHERE name = ?", (name,)) > 0

    async def get_user_secret(self, name: str) -> str | None:
        rows = await self._call(self._fetch, "SELECT value FROM secrets WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    async def list_user_secrets(self) -> list[tuple[str, float]]:
        rows = await self._call(self._fetch, "SELECT name, updated_at FROM secrets ORDER BY name")
        return [(str(r[0]), float(r[1])) for r in rows]

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
        return [Service.from_dict(orjson.loads(r[0]), strict=False) for r in rows]

    def _steps(self, run_id: str) -> dict[str, StepState]:
        rows = self._fetch(f"SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ?", (run_id,))
        return {r[0]: step_state(r) for r in rows}

    async def run_status(self, run_id: str) -> str | None:
        rows = await self._call(self._fetch, "SELECT status FROM runs WHERE id = ?", (run_id,))
        return str(rows[0][0]) if rows else None

    async def get_run(self, run_id: str) -> RunState | None:
        return await self._call(self._get_run, run_id)

    def _get_run(self, run_id: str) -> RunState | None:
        rows = self._fetch(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return None
        return RunState(run_info(rows[0]), self._steps(run_id))

    async def append_logs(
        self, run_id: str, step: str, attempt: int, lines: Sequence[LogLine], now: float
    ) -> bool:
        def append(conn: sqlite3.Connection) -> bool:
            (count,) = conn.execute(step_logs.SQLITE_COUNT, (run_id, step, attempt)).fetchone()
            rows, kept = step_logs.capped(count, lines, now)
            if rows:
                text = step_logs.encode(rows)
                conn.execute(step_logs.SQLITE_INSERT, (run_id, step, attempt, text, len(rows), now))
            return kept

        return await self._call(self._transaction, append)

    async def get_logs(
        self,
        run_id: str,
        step: str | None = None,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 200,
    ) -> list[LogChunk]:
        sql, params = step_logs.select(run_id, step, attempt, after, limit, pg=False)
        return [step_logs.chunk(r) for r in await self._call(self._fetch, sql, tuple(params))]

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
        workflows: Sequence[str] | None = None,
    ) -> list[RunInfo]:
        where: list[str] = []
        params: list[Any] = []
        if workflows is not None:
            if not workflows:
                return []
            where.append(f"workflow IN ({', '.join('?' * len(workflows))})")
            params.extend(workflows)
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

    # -- run trees (see engine/lineage.py) -----------------------------------------------------

    async def start_child(
        self, decision: Decision, parent: str, limits: RunLimits
    ) -> tuple[str, str]:
        now = time.time()

        def work(conn: sqlite3.Connection) -> tuple[str, str]:
            rows = BatchRows([decision], None, now)  # held by nobody: the claimer takes it
            return sqlite_lineage.start_child(
                conn, decision.run_id, parent, limits, lambda: self._write(conn, rows, now)
            )

        return await self._call(self._transaction, work)

    async def cancel_runs(
        self,
        runs: RunFilter,
        reason: str,
        now: float,
        report: Callable[[str, str, Any], dict[str, Any]],
    ) -> tuple[list[str], list[str]]:
        self._fenced_until = time.monotonic() + 10.0
        try:
            return await self._in_thread(
                self._transaction,
                lambda conn: sqlite_lineage.cancel(conn, runs, reason, now, report),
            )
        finally:  # a long cancel: decisions queued meanwhile are still checked after it
            self._fenced_until = time.monotonic() + 10.0

    async def retry_runs(self, runs: RunFilter, event: dict[str, Any], now: float) -> list[str]:
        return await self._in_thread(
            self._transaction, lambda conn: sqlite_lineage.retry(conn, runs, event, now)
        )

    async def not_owned(self, run_ids: Sequence[str]) -> list[str]:
        return await self._call(sqlite_lineage.not_owned, self.conn, self.owner, run_ids)

    # -- schedules ------------------------------------------------------------------------------

    async def add_schedule(self, workflow: str, first: float | None, now: float) -> None:
        await self._call(
            self._execute,
            "INSERT INTO schedules (workflow, next_start, paused, updated_at) VALUES (?, ?, 0, ?) "
            "ON CONFLICT (workflow) DO NOTHING",
            (workflow, first, now),
        )

    async def move_schedule(self, workflow: str, next_start: float | None, now: float) -> None:
        await self._call(
            self._execute,
            "UPDATE schedules SET next_start = ?, updated_at = ? WHERE workflow = ?",
            (next_start, now, workflow),
        )

    async def latest_version(self, name: str) -> int | None:
        rows = await self._call(
            self._fetch, "SELECT MAX(version) FROM workflows WHERE name = ?", (name,)
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    async def drop_schedule(self, workflow: str) -> None:
        await self._call(self._execute, "DELETE FROM schedules WHERE workflow = ?", (workflow,))

    async def list_schedules(self) -> list[ScheduleRow]:
        rows = await self._call(
            self._fetch,
            "SELECT workflow, next_start, paused, updated_at FROM schedules ORDER BY workflow",
        )
        return [ScheduleRow(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    async def pause_schedule(self, workflow: str, paused: bool, now: float) -> bool:
        changed = await self._call(
            self._execute,
            "UPDATE schedules SET paused = ?, updated_at = ? WHERE workflow = ?",
            (int(paused), now, workflow),
        )
        return changed > 0

    async def fire_schedule(
        self,
        workflow: str,
        expected: float,
        following: float | None,
        decision: Decision,
        max_active: int | None,
        now: float,
    ) -> str:
        def work(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                "SELECT next_start, paused FROM schedules WHERE workflow = ?", (workflow,)
            ).fetchone()
            if row is None or row[1] or row[0] != expected:
                return "moved"
            if max_active is not None:
                (active,) = conn.execute(
                    "SELECT COUNT(*) FROM runs WHERE workflow = ? "
                    "AND status IN ('pending', 'running', 'waiting')",
                    (workflow,),
                ).fetchone()
                if active >= max_active:
                    return "busy"
            owner = conn.execute(
                "SELECT workflow FROM runs WHERE id = ?", (decision.run_id,)
            ).fetchone()
            if owner is None:
                # Held by nobody: this engine's claimer takes it like any new run.
                self._write(conn, BatchRows([decision], None, now), now)
            conn.execute(
                "UPDATE schedules SET next_start = ?, updated_at = ? WHERE workflow = ?",
                (following, now, workflow),
            )
            return "fired" if owner is None or owner[0] == workflow else "taken"

        return await self._call(self._transaction, work)

    async def start_once(
        self, decision: Decision, key: starts.StartKey | None, now: float
    ) -> starts.StartOutcome:
        return await self._call(
            self._transaction, lambda conn: starts.sqlite_start(self, conn, decision, key, now)
        )

    async def start_triggered(
        self, decision: Decision, receipt: receipts.Receipt, now: float
    ) -> receipts.Received:
        return await self._call(
            self._transaction,
            lambda conn: receipts.sqlite_start(self, conn, decision, receipt, now),
        )

    async def purge_start_keys(self, now: float) -> int:
        return await self._call(self._execute, starts.purge_sql("?"), (now,))

    # -- notifications --------------------------------------------------------------------------

    async def record_notification(self, row: NotificationRow) -> None:
        await self._call(self._execute, INSERT_NOTIFICATION, notification_params(row))

    async def list_notifications(self, run_id: str) -> list[NotificationRow]:
        rows = await self._call(
            self._fetch,
            "SELECT run_id, event, channel, target, ok, tries, error, created_at, delivery_id "
            "FROM notifications WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [NotificationRow(r[0], r[1], r[2], r[3], bool(r[4]), *r[5:]) for r in rows]

    # -- sessions and the audit log (see access.py) ---------------------------------------------

    async def add_session(self, row: SessionRow) -> None:
        await self._call(access.sqlite_add_session, self.conn, row)

    async def get_session(self, key: str) -> SessionRow | None:
        return await self._call(access.sqlite_get_session, self.conn, key)

    async def drop_session(self, key: str) -> None:
        await self._call(access.sqlite_drop_session, self.conn, key)

    async def add_audit(self, row: AuditRow) -> None:
        await self._call(access.sqlite_add_audit, self.conn, row)

    async def prune_audit(self, before: float, limit: int) -> int:
        return await self._call(access.sqlite_prune_audit, self.conn, before, limit)

    async def list_audit(
        self, since: float | None, token: str | None, before: int | None, limit: int
    ) -> list[AuditRow]:
        return await self._call(access.sqlite_list_audit, self.conn, since, token, before, limit)
