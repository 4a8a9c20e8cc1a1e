"""Run trees in SQLite (see engine/lineage.py): starting a sub-workflow run within its limits, and
cancelling or retrying runs set-wise. Each function runs inside the store's write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from legato.engine import lineage
from legato.engine.lineage import RunFilter, RunLimits
from legato.store.rows import dump

# Version 5: each run knows its parent run (indexed, for a tree's descendants), its root run and its
# depth; `run_trees` counts each root's descendants, so a start checks its limits with one lookup.
V5 = """
ALTER TABLE runs ADD COLUMN parent_id TEXT;
ALTER TABLE runs ADD COLUMN root TEXT;
ALTER TABLE runs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET parent_id = json_extract(parent, '$[0]') WHERE parent IS NOT NULL;
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
"""

ACTIVE = "('pending', 'running', 'waiting')"
_INBOX = "INSERT INTO inbox (run_id, event, dedupe, created_at) VALUES (?, ?, ?, ?)"
_WAKE = "UPDATE runs SET wake_at = COALESCE(MIN(wake_at, ?1), ?1) WHERE id = ?2"
# A descendant's error and its steps' reason say which run stopped it, as a one-by-one cancel did.
_MESSAGE = "CASE WHEN c.seed THEN ? ELSE 'its parent run ' || c.parent_id || ' stopped' END"
# ChildDone for the parent of a cancelled run (run id, workflow, parent as stored).
Report = Callable[[str, str, Any], dict[str, Any]]


def start_child(
    conn: sqlite3.Connection,
    run_id: str,
    parent: str,
    limits: RunLimits,
    write: Callable[[], object],
) -> tuple[str, str]:
    """Insert a sub-workflow's run (`write` writes its first decision) if its parent still runs and
    no limit stops it; returns what happened and the root run's id."""
    if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
        return lineage.EXISTS, ""
    row = conn.execute(
        "SELECT status, COALESCE(root, id), depth FROM runs WHERE id = ?", (parent,)
    ).fetchone()
    if row is None or row[0] not in ("pending", "running", "waiting"):
        return lineage.GONE, ""
    _, root, depth = row
    if depth >= limits.max_depth:
        return lineage.MAX_DEPTH, root
    counted = conn.execute(
        "INSERT INTO run_trees (root, descendants) VALUES (?1, 1) ON CONFLICT (root) DO UPDATE "
        "SET descendants = descendants + 1 WHERE descendants < ?2 RETURNING descendants",
        (root, limits.max_descendants),
    ).fetchone()
    if counted is None:
        return lineage.MAX_DESCENDANTS, root
    write()
    conn.execute(
        "UPDATE runs SET parent_id = ?, root = ?, depth = ? WHERE id = ?",
        (parent, root, depth + 1, run_id),
    )
    return lineage.STARTED, root


def cancel(
    conn: sqlite3.Connection, f: RunFilter, reason: str, now: float, report: Report
) -> tuple[list[str], list[str]]:
    """Cancel the runs `f` matches that have not ended, and every descendant of theirs that has not,
    in a few statements over the whole set. The parent of a matched run (if it still runs and is not
    cancelled with it) hears of its end in its inbox. Returns the runs cancelled and the parents
    told."""
    cond, params = lineage.where(f, postgres=False)
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS cancelling "
        "(id TEXT PRIMARY KEY, seed INTEGER NOT NULL, parent_id TEXT)"
    )
    conn.execute("DELETE FROM temp.cancelling")
    conn.execute(
        "WITH RECURSIVE tree(id, seed) AS ("
        f"SELECT id, 1 FROM runs WHERE {cond} "
        "UNION ALL SELECT r.id, 0 FROM runs r JOIN tree t ON r.parent_id = t.id) "
        "INSERT INTO temp.cancelling (id, seed, parent_id) SELECT t.id, MAX(t.seed), r.parent_id "
        f"FROM tree t JOIN runs r ON r.id = t.id WHERE r.status IN {ACTIVE} GROUP BY t.id",
        params,
    )
    ids = [r[0] for r in conn.execute("SELECT id FROM temp.cancelling ORDER BY id")]
    if not ids:
        return [], []
    error = f"json_object('kind', 'cancelled', 'message', {_MESSAGE})"
    # The attempts cut short are kept, as the decider keeps them.
    conn.execute(
        "INSERT OR REPLACE INTO attempts (run_id, step, attempt, status, started_at, "
        "finished_at, request, output, error) "
        f"SELECT s.run_id, s.name, s.attempt, 'cancelled', s.started_at, ?, s.request, NULL, {error} "
        "FROM steps s JOIN temp.cancelling c ON c.id = s.run_id "
        "WHERE s.status = 'running' OR (s.status = 'waiting' AND s.reason = 'callback')",
        (now, reason),
    )
    conn.execute(
        f"UPDATE steps SET status = 'cancelled', reason = {_MESSAGE}, finished_at = ?, "
        "next_at = NULL, listen_key = NULL FROM temp.cancelling c WHERE steps.run_id = c.id "
        "AND steps.status NOT IN ('succeeded', 'failed', 'skipped', 'cancelled')",
        (reason, now),
    )
    parents = conn.execute(
        "SELECT r.id, r.workflow, r.parent, r.parent_id FROM temp.cancelling c "
        "JOIN runs r ON r.id = c.id JOIN runs p ON p.id = c.parent_id "
        f"WHERE c.seed AND p.status IN {ACTIVE} "
        "AND c.parent_id NOT IN (SELECT id FROM temp.cancelling)"
    ).fetchall()
    # Owner cleared: an engine holding one of these runs finds it lost at its next commit.
    conn.execute(
        f"UPDATE runs SET status = 'cancelled', finished_at = ?, error = {error}, owner = NULL, "
        "lease_until = NULL, wake_at = NULL FROM temp.cancelling c WHERE runs.id = c.id",
        (now, reason),
    )
    conn.execute("DELETE FROM inbox WHERE run_id IN (SELECT id FROM temp.cancelling)")
    told: list[str] = []
    for run_id, workflow, parent, parent_id in parents:
        conn.execute(_INBOX, (parent_id, dump(report(run_id, workflow, parent)), None, now))
        conn.execute(_WAKE, (now, parent_id))
        told.append(parent_id)
    conn.execute("DELETE FROM temp.cancelling")
    return ids, told


def retry(conn: sqlite3.Connection, f: RunFilter, event: dict[str, Any], now: float) -> list[str]:
    """Queue a retry in the inbox of each failed or cancelled run `f` matches (once: a retry
    already queued for a run counts for it), due at once."""
    cond, params = lineage.where(f, postgres=False)
    rows = conn.execute(
        "INSERT OR IGNORE INTO inbox (run_id, event, dedupe, created_at) "
        f"SELECT id, ?, 'retry:' || id, ? FROM runs WHERE ({cond}) "
        "AND status IN ('failed', 'cancelled') RETURNING run_id",
        (dump(event), now, *params),
    ).fetchall()
    ids = sorted(r[0] for r in rows)
    conn.executemany(_WAKE, [(now, i) for i in ids])
    return ids


def not_owned(conn: sqlite3.Connection, owner: str | None, run_ids: Sequence[str]) -> list[str]:
    """Those of these runs stored with another owner than `owner` (cancelled set-wise, or taken
    over); a run not stored yet is not among them."""
    found: list[str] = []
    for i in range(0, len(run_ids), 500):
        part = run_ids[i : i + 500]
        marks = ", ".join("?" for _ in part)
        found += [
            r[0]
            for r in conn.execute(
                f"SELECT id FROM runs WHERE id IN ({marks}) AND owner IS NOT ?", (*part, owner)
            )
        ]
    return found
