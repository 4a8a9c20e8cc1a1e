"""Step logs in both backends (schema version 11): the lines an attempt logged, one row per batch of
lines (an attempt's captured output, or one callback's lines), in the order they were written.

An attempt's captured lines are inserted in the transaction that records its outcome (BatchRows.logs),
so they are durable with it; a step with no output writes no row. A service's callback appends a row
of its own; an attempt takes at most MAX_CHUNKS of them, so a chatty service cannot fill the store.
The first callback past that bound writes one mark line instead ("later callbacks' lines are not
kept"), so the cut shows where it happened; later ones write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from legato.engine.outcome import LogLine

MAX_CHUNKS = 100  # rows per attempt: its own output, then what callbacks appended
REAL = "DOUBLE PRECISION"

SQLITE_V11 = """
CREATE TABLE IF NOT EXISTS step_logs (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL,
    lines TEXT NOT NULL, n INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS step_logs_by_attempt ON step_logs (run_id, step, attempt, id);
"""
POSTGRES_V11 = f"""
CREATE TABLE IF NOT EXISTS step_logs (
    id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL,
    lines TEXT NOT NULL, n INTEGER NOT NULL, created_at {REAL} NOT NULL);
CREATE INDEX IF NOT EXISTS step_logs_by_attempt ON step_logs (run_id, step, attempt, id);
"""
SQLITE_INSERT = (
    "INSERT INTO step_logs (run_id, step, attempt, lines, n, created_at) VALUES (?, ?, ?, ?, ?, ?)"
)
POSTGRES_INSERT = (
    "INSERT INTO step_logs (run_id, step, attempt, lines, n, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
SQLITE_COUNT = "SELECT COUNT(*) FROM step_logs WHERE run_id = ? AND step = ? AND attempt = ?"
POSTGRES_COUNT = "SELECT COUNT(*) FROM step_logs WHERE run_id = $1 AND step = $2 AND attempt = $3"


DROPPED = (
    f"[truncated: at most {MAX_CHUNKS} callbacks' lines are kept per attempt; later ones are not]"
)


def capped(count: int, lines: Any, now: float) -> tuple[Any, bool]:
    """What to write for a callback's lines when the attempt has `count` rows: (lines or None,
    whether the callback's own lines are kept)."""
    if count < MAX_CHUNKS:
        return lines, True
    if count == MAX_CHUNKS:
        return [(now, "WARNING", "legato", DROPPED)], False
    return None, False


@dataclass(frozen=True, slots=True)
class LogChunk:
    """One row: `id` orders the rows of a run (and is the cursor of the next page)."""

    id: int
    step: str
    attempt: int
    lines: list[LogLine]
    created_at: float


def encode(lines: Any) -> str:
    return orjson.dumps([list(line) for line in lines]).decode()


def chunk(row: Any) -> LogChunk:
    lines = [(float(t), str(lv), str(src), str(msg)) for t, lv, src, msg in orjson.loads(row[3])]
    return LogChunk(int(row[0]), row[1], int(row[2]), lines, float(row[4]))


def select(
    run_id: str, step: str | None, attempt: int | None, after: int, limit: int, *, pg: bool
) -> tuple[str, list[Any]]:
    """The query of a run's rows (of one step, of one attempt), from `after` on, in order."""
    params: list[Any] = [run_id, after]
    where = ["run_id = {}", "id > {}"]
    if step is not None:
        where.append("step = {}")
        params.append(step)
    if attempt is not None:
        where.append("attempt = {}")
        params.append(attempt)
    marks = [f"${i}" if pg else "?" for i in range(1, len(params) + 2)]
    sql = (
        "SELECT id, step, attempt, lines, created_at FROM step_logs WHERE "
        + " AND ".join(where).format(*marks[:-1])
        + f" ORDER BY id LIMIT {marks[-1]}"
    )
    return sql, [*params, limit]
