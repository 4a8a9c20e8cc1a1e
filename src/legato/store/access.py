"""Who may use the API, and what they changed: UI sessions and the audit log (schema version 8).

A session row holds a hash of the session id (the id itself lives only in the browser's cookie) and
a fingerprint of the token it was made with, so a session outlives neither its expiry, a logout,
nor a change of its token; being in the store, it is shared by every process on one PostgreSQL.
The audit log keeps one row per change made through the API or the UI, never a request body, for
the retention the server is given (pruned in batches, oldest first, along the `at` index).
Both backends' queries are here; `SQLiteStore` and `PostgresStore` call them in a line each.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg


@dataclass(frozen=True, slots=True)
class SessionRow:
    key: str  # sha256 of the session id
    token_name: str
    fingerprint: str  # HMAC of the session id under the token it was made with
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: float
    token: str | None  # the token's name (None: a server without tokens)
    method: str
    path: str
    target: str | None  # the run id, workflow, service or schedule the change was about
    status: int
    client: str | None
    id: int = 0  # given by the store


SQLITE_V8 = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, token_name TEXT NOT NULL, fingerprint TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, token TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, target TEXT, status INTEGER NOT NULL, client TEXT);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_by_token ON audit (token, id)
"""
POSTGRES_V8 = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, token_name TEXT NOT NULL, fingerprint TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, token TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, target TEXT, status INTEGER NOT NULL, client TEXT);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_by_token ON audit (token, id)
"""

_SESSION_COLUMNS = "key, token_name, fingerprint, created_at, expires_at"
_AUDIT_COLUMNS = "at, token, method, path, target, status, client"


def _audit_query(
    since: float | None, token: str | None, before: int | None, limit: int, mark: str
) -> tuple[str, list[Any]]:
    """Newest first; `before` is the id the previous page ended at. `mark(n)` numbers parameters."""
    where, params = [], []
    for clause, value in (("at >= {}", since), ("token = {}", token), ("id < {}", before)):
        if value is not None:
            params.append(value)
            where.append(clause.format(mark.format(len(params))))
    params.append(limit)
    sql = (
        f"SELECT {_AUDIT_COLUMNS}, id FROM audit"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY id DESC LIMIT {mark.format(len(params))}"
    )
    return sql, params


def _audit_row(row: Any) -> AuditRow:
    return AuditRow(float(row[0]), row[1], row[2], row[3], row[4], int(row[5]), row[6], int(row[7]))


# -- SQLite (called on the store's connection, in its thread when it has one) ---------------------


def sqlite_add_session(conn: sqlite3.Connection, row: SessionRow) -> None:
    conn.execute("DELETE FROM sessions WHERE expires_at < ?", (row.created_at,))
    conn.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        (row.key, row.token_name, row.fingerprint, row.created_at, row.expires_at),
    )


def sqlite_get_session(conn: sqlite3.Connection, key: str) -> SessionRow | None:
    found = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE key = ?", (key,)
    ).fetchone()
    return SessionRow(*found) if found else None


def sqlite_drop_session(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM sessions WHERE key = ?", (key,))


def sqlite_add_audit(conn: sqlite3.Connection, row: AuditRow) -> None:
    conn.execute(
        f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row.at, row.token, row.method, row.path, row.target, row.status, row.client),
    )


def sqlite_prune_audit(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return conn.execute(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY at LIMIT ?)",
        (before, limit),
    ).rowcount


def sqlite_list_audit(
    conn: sqlite3.Connection, since: float | None, token: str | None, before: int | None, limit: int
) -> list[AuditRow]:
    sql, params = _audit_query(since, token, before, limit, "?")
    return [_audit_row(r) for r in conn.execute(sql, params).fetchall()]


# -- PostgreSQL -----------------------------------------------------------------------------------


async def pg_add_session(pool: asyncpg.Pool, row: SessionRow) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM sessions WHERE expires_at < $1", row.created_at)
        await conn.execute(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
            row.key,
            row.token_name,
            row.fingerprint,
            row.created_at,
            row.expires_at,
        )


async def pg_get_session(pool: asyncpg.Pool, key: str) -> SessionRow | None:
    found = await pool.fetchrow(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE key = $1", key)
    return SessionRow(*found) if found else None


async def pg_drop_session(pool: asyncpg.Pool, key: str) -> None:
    await pool.execute("DELETE FROM sessions WHERE key = $1", key)


async def pg_add_audit(pool: asyncpg.Pool, row: AuditRow) -> None:
    await pool.execute(
        f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        row.at,
        row.token,
        row.method,
        row.path,
        row.target,
        row.status,
        row.client,
    )


async def pg_prune_audit(pool: asyncpg.Pool, before: float, limit: int) -> int:
    done = await pool.execute(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 ORDER BY at LIMIT $2 "
        "FOR UPDATE SKIP LOCKED)",  # several API processes may prune at once
        before,
        limit,
    )
    return int(done.split()[-1])


async def pg_list_audit(
    pool: asyncpg.Pool, since: float | None, token: str | None, before: int | None, limit: int
) -> list[AuditRow]:
    sql, params = _audit_query(since, token, before, limit, "${}")
    return [_audit_row(r) for r in await pool.fetch(sql, *params)]
