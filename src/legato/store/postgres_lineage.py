"""Run trees in PostgreSQL (see engine/lineage.py and sqlite_lineage.py). Each function runs inside
the store's transaction.

Several workers start sub-workflow runs at once, so the limits are checked in the transaction that
inserts the run: `run_trees`' row of the root is locked while its count goes up, and the parent's row
is locked, so a parent that ends (or is cancelled) cannot get a child after it. A set-wise
cancel takes an advisory lock that child starts share: it sees every child committed before it, and
no child starts under a run it cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from legato.engine import lineage
from legato.engine.lineage import RunFilter, RunLimits
from legato.store.rows import dump

V5 = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS parent_id TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS root TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS depth INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET parent_id = parent::json->>0 WHERE parent IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
WITH RECURSIVE tree(id, root, depth) AS (
    SELECT p.id, p.id, 0 FROM runs p WHERE p.parent_id IS NULL
        AND EXISTS (SELECT 1 FROM runs c WHERE c.parent_id = p.id)
    UNION ALL SELECT r.id, t.root, t.depth + 1 FROM runs r JOIN tree t ON r.parent_id = t.id)
UPDATE runs SET root = tree.root, depth = tree.depth FROM tree
    WHERE runs.id = tree.id AND tree.depth > 0;
CREATE TABLE IF NOT EXISTS run_trees (root TEXT PRIMARY KEY, descendants INTEGER NOT NULL);
INSERT INTO run_trees (root, descendants)
    SELECT root, COUNT(*) FROM runs WHERE root IS NOT NULL GROUP BY root
    ON CONFLICT (root) DO NOTHING;
"""

TREE_LOCK = 0x1E6A71  # advisory lock: child starts share it, a set-wise cancel takes it alone
ACTIVE = "('pending', 'running', 'waiting')"
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Report = Callable[[str, str, Any], dict[str, Any]]
_INBOX = "INSERT INTO inbox (run_id, event, dedupe, created_at) VALUES ($1, $2, $3, $4)"
_WAKE = "UPDATE runs SET wake_at = LEAST(wake_at, $1) WHERE id = $2"


def _message(mark: str) -> str:
    return f"CASE WHEN c.seed THEN {mark} ELSE 'its parent run ' || c.parent_id || ' stopped' END"


async def start_child(
    conn: Conn,
    run_id: str,
    parent: str,
    limits: RunLimits,
    write: Callable[[], Any],
) -> tuple[str, str]:
    """See sqlite_lineage.start_child; `write` is awaited."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", TREE_LOCK)
    if await conn.fetchval("SELECT 1 FROM runs WHERE id = $1", run_id):
        return lineage.EXISTS, ""
    row = await conn.fetchrow(
        "SELECT status, COALESCE(root, id), depth FROM runs WHERE id = $1 FOR UPDATE", parent
    )
    if row is None or row[0] not in ("pending", "running", "waiting"):
        return lineage.GONE, ""
    root, depth = str(row[1]), int(row[2])
    if depth >= limits.max_depth:
        return lineage.MAX_DEPTH, root
    counted = await conn.fetchval(
        "INSERT INTO run_trees AS t (root, descendants) VALUES ($1, 1) ON CONFLICT (root) "
        "DO UPDATE SET descendants = t.descendants + 1 WHERE t.descendants < $2 "
        "RETURNING descendants",
        root,
        limits.max_descendants,
    )
    if counted is None:
        return lineage.MAX_DESCENDANTS, root
    await write()
    await conn.execute(
        "UPDATE runs SET parent_id = $1, root = $2, depth = $3 WHERE id = $4",
        parent,
        root,
        depth + 1,
        run_id,
    )
    return lineage.STARTED, root


async def cancel(
    conn: Conn, f: RunFilter, reason: str, now: float, report: Report
) -> tuple[list[str], list[str]]:
    """See sqlite_lineage.cancel."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", TREE_LOCK)
    cond, params = lineage.where(f, postgres=True)
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS cancelling (id TEXT PRIMARY KEY, seed BOOLEAN NOT NULL, "
        "parent_id TEXT) ON COMMIT DELETE ROWS"
    )
    await conn.execute("DELETE FROM cancelling")
    # A descendant is found by following parent_id down from each matched run (an index lookup
    # per run), or, under a matched root run with a big tree, by its `root` column in one scan.
    scanned = await _big_roots(conn, f, cond, params)
    skip, scan = "", ""
    if scanned:
        mark = f"${len(params) + 1}::text[]"
        skip = f" WHERE r.root IS NULL OR NOT (r.root = ANY({mark}))"
        scan = f" UNION ALL SELECT id, FALSE FROM runs WHERE root = ANY({mark})"
    await conn.execute(
        "WITH RECURSIVE tree(id, seed) AS ("
        f"SELECT id, TRUE FROM runs WHERE {cond} "
        f"UNION ALL SELECT r.id, FALSE FROM runs r JOIN tree t ON r.parent_id = t.id{skip}) "
        "INSERT INTO cancelling (id, seed, parent_id) SELECT t.id, bool_or(t.seed), r.parent_id "
        f"FROM (SELECT id, seed FROM tree{scan}) t JOIN runs r ON r.id = t.id "
        f"WHERE r.status IN {ACTIVE} GROUP BY t.id, r.parent_id",
        *params,
        *([scanned] if scanned else []),
    )
    await conn.execute("ANALYZE cancelling")  # a temporary table has no statistics otherwise
    # Lock them and the parents that may hear of them in id order (as a commit does, so neither
    # waits on the other in a cycle), then drop those that ended meanwhile.
    await conn.fetchval(
        "SELECT count(*) FROM (SELECT id FROM runs WHERE id IN (SELECT id FROM cancelling UNION "
        "SELECT parent_id FROM cancelling WHERE seed AND parent_id IS NOT NULL) ORDER BY id "
        "FOR UPDATE) locked"
    )
    await conn.execute(
        f"DELETE FROM cancelling c USING runs r WHERE r.id = c.id AND r.status NOT IN {ACTIVE}"
    )
    ids = [r[0] for r in await conn.fetch("SELECT id FROM cancelling ORDER BY id")]
    if not ids:
        return [], []
    error = f"json_build_object('kind', 'cancelled', 'message', {_message('$2::text')})::text"
    await conn.execute(
        "INSERT INTO attempts (run_id, step, attempt, status, started_at, finished_at, request, "
        f"output, error) SELECT s.run_id, s.name, s.attempt, 'cancelled', s.started_at, $1, "
        f"s.request, NULL, {error} FROM steps s JOIN cancelling c ON c.id = s.run_id "
        "WHERE s.status = 'running' OR (s.status = 'waiting' AND s.reason = 'callback') "
        "ON CONFLICT (run_id, step, attempt) DO UPDATE SET status = excluded.status, "
        "finished_at = excluded.finished_at, error = excluded.error",
        now,
        reason,
    )
    await conn.execute(
        f"UPDATE steps SET status = 'cancelled', reason = {_message('$2::text')}, "
        "finished_at = $1, next_at = NULL, listen_key = NULL FROM cancelling c "
        "WHERE steps.run_id = c.id "
        "AND steps.status NOT IN ('succeeded', 'failed', 'skipped', 'cancelled')",
        now,
        reason,
    )
    parents = await conn.fetch(
        "SELECT r.id, r.workflow, r.parent, r.parent_id FROM cancelling c "
        "JOIN runs r ON r.id = c.id JOIN runs p ON p.id = c.parent_id "
        f"WHERE c.seed AND p.status IN {ACTIVE} "
        "AND NOT EXISTS (SELECT 1 FROM cancelling o WHERE o.id = c.parent_id)"
    )
    await conn.execute(
        f"UPDATE runs SET status = 'cancelled', finished_at = $1, error = {error}, owner = NULL, "
        "lease_until = NULL, wake_at = NULL FROM cancelling c WHERE runs.id = c.id",
        now,
        reason,
    )
    await conn.execute("DELETE FROM inbox i USING cancelling c WHERE i.run_id = c.id")
    told: list[str] = []
    for run_id, workflow, parent, parent_id in parents:
        await conn.execute(_INBOX, parent_id, dump(report(run_id, workflow, parent)), None, now)
        await conn.execute(_WAKE, now, parent_id)
        told.append(parent_id)
    return ids, told


async def _big_roots(conn: Conn, f: RunFilter, cond: str, params: list[object]) -> list[str]:
    """The root runs whose whole trees a cancel takes (those it matches, and the parent whose
    children it matches) that are big enough for scanning `runs` once (no index on `root`) to beat
    an index lookup per descendant: more than 1/20 of the table, and 1000 runs."""
    sql = f"SELECT id FROM runs WHERE ({cond}) AND root IS NULL"
    if f.parent is not None:
        sql += f" UNION SELECT id FROM runs WHERE id = ${len(params) + 1} AND root IS NULL"
    extra = [f.parent] if f.parent is not None else []
    roots = [str(r[0]) for r in await conn.fetch(sql, *params, *extra)]
    if not roots:
        return []
    under = await conn.fetchval(
        "SELECT COALESCE(SUM(descendants), 0) FROM run_trees WHERE root = ANY($1::text[])", roots
    )
    rows = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'runs'::regclass")
    return roots if under >= 1000 and under * 20 >= (rows or 0) else []


async def retry(conn: Conn, f: RunFilter, event: dict[str, Any], now: float) -> list[str]:
    """See sqlite_lineage.retry."""
    cond, params = lineage.where(f, postgres=True)
    n = len(params)
    rows = await conn.fetch(
        "INSERT INTO inbox (run_id, event, dedupe, created_at) "
        f"SELECT id, ${n + 1}, 'retry:' || id, ${n + 2} FROM runs WHERE ({cond}) "
        "AND status IN ('failed', 'cancelled') ORDER BY id "
        "ON CONFLICT (dedupe) DO NOTHING RETURNING run_id",
        *params,
        dump(event),
        now,
    )
    ids = sorted(r[0] for r in rows)
    if ids:
        await conn.execute(
            "UPDATE runs SET wake_at = LEAST(wake_at, $1) WHERE id = ANY($2::text[])", now, ids
        )
    return ids


async def not_owned(conn: Conn, owner: str | None, run_ids: Sequence[str]) -> list[str]:
    """See sqlite_lineage.not_owned."""
    rows = await conn.fetch(
        "SELECT id FROM runs WHERE id = ANY($1::text[]) AND owner IS DISTINCT FROM $2",
        list(run_ids),
        owner,
    )
    return [r[0] for r in rows]
