"""A big run tree written straight into a store: a root and `n` descendant runs, each waiting for
its own child (as a parked sub-workflow run does), `fanout` children per run, breadth first."""

from __future__ import annotations

import time
from typing import Any

import orjson

from legato.engine.ids import new_run_id
from legato.store.protocol import Store

WORKFLOW = {"name": "tree", "steps": {"me": {"workflow": "tree"}}}


def tree_rows(n: int, fanout: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Run rows (id, status, parent, parent_id, root, depth, created_at) and step rows."""
    now = time.time()
    ids = [new_run_id() for _ in range(n + 1)]
    depth = [0] * (n + 1)
    runs: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    for i, run_id in enumerate(ids):
        parent = ids[(i - 1) // fanout] if i else None
        if i:
            depth[i] = depth[(i - 1) // fanout] + 1
        runs.append(
            (
                run_id,
                "running",
                orjson.dumps([parent, "me", 1]).decode() if parent else None,
                parent,
                ids[0] if i else None,
                depth[i],
                now,
            )
        )
        request: dict[str, Any] = {
            "workflow": "tree",
            "version": None,
            "input": {},
            "run_id": f"{run_id}-c",
        }
        steps.append((run_id, "me", now, orjson.dumps(request).decode()))
    return runs, steps


async def build_tree(store: Store, n: int, fanout: int = 10) -> str:
    """Write the tree; returns the root's id."""
    runs, steps = tree_rows(n, fanout)
    run_sql = (
        "INSERT INTO runs (id, workflow, version, status, input, created_at, started_at, parent, "
        "parent_id, root, depth) VALUES ({}, 'tree', 1, {}, '{{}}', {}, {}, {}, {}, {}, {})"
    )
    step_sql = (
        "INSERT INTO steps (run_id, name, status, attempt, tries, started_at, request, reason) "
        "VALUES ({}, {}, 'waiting', 1, 1, {}, {}, 'child')"
    )
    if store.url.startswith("postgres"):
        pool: Any = store.pool  # type: ignore[attr-defined]
        marks = [f"${i}" for i in range(1, 9)]
        await pool.executemany(
            run_sql.format(marks[0], marks[1], marks[6], marks[6], *marks[2:6]), runs
        )
        await pool.executemany(step_sql.format(*marks[:4]), steps)
        await pool.execute(
            "INSERT INTO run_trees VALUES ($1, $2) ON CONFLICT DO NOTHING", runs[0][0], n
        )
    else:
        conn: Any = store.conn  # type: ignore[attr-defined]
        q = ["?"] * 8
        sqlite_runs = [(r[0], r[1], r[6], r[6], r[2], r[3], r[4], r[5]) for r in runs]
        conn.execute("BEGIN")
        conn.executemany(run_sql.format(*q), sqlite_runs)
        conn.executemany(step_sql.format(*q[:4]), steps)
        conn.execute("INSERT INTO run_trees VALUES (?, ?)", (runs[0][0], n))
        conn.execute("COMMIT")
    return str(runs[0][0])
