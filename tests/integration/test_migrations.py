"""Schema migrations on every backend: a new database gets them all; an older one is refused until it
is migrated, and then keeps its runs; both end with exactly the same schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from legato.engine.state import Decision, RunInfo, StepState
from legato.errors import LegatoError
from legato.store.access import AuditRow
from legato.store.jsontext import dump_json as dump
from legato.store.protocol import KeptEvent, Store, open_store
from legato.store.sqlite import SCHEMA_VERSION


async def schema_of(store: Store) -> Any:
    """Tables, columns and indexes, as the database describes them."""
    if store.url.startswith("sqlite"):
        rows = await store._call(  # type: ignore[attr-defined]
            store._fetch,  # type: ignore[attr-defined]
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name",
        )
        return [tuple(r) for r in rows]
    schema = store.schema  # type: ignore[attr-defined]
    columns = await store.pool.fetch(  # type: ignore[attr-defined]
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = $1 ORDER BY 1, 2",
        schema,
    )
    indexes = await store.pool.fetch(  # type: ignore[attr-defined]
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1", schema
    )
    return [tuple(r) for r in columns], [(n, d.replace(schema, "S")) for n, d in indexes]


async def rows_of(store: Store, sql: str) -> list[tuple[Any, ...]]:
    if store.url.startswith("sqlite"):
        found = await store._call(store._fetch, sql)  # type: ignore[attr-defined]
    else:
        found = await store.pool.fetch(sql)  # type: ignore[attr-defined]
    return [tuple(r) for r in found]


def other_db(db_url: str, tmp_path: Path) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return db_url.replace("?schema=", "?schema=fresh_")


async def write_v1(store: Any, run: RunInfo, steps: list[StepState]) -> None:
    """Rows as the Legato of issue 2 wrote them (version 1 has none of the later columns)."""
    sqlite = store.url.startswith("sqlite")

    def marks(n: int) -> str:
        return ", ".join("?" * n) if sqlite else ", ".join(f"${i}" for i in range(1, n + 1))

    statements: list[tuple[str, tuple[Any, ...]]] = [
        (
            f"INSERT INTO runs (id, workflow, version, status, input, output, error, created_at, "
            f"started_at, finished_at, deadline) VALUES ({marks(11)})",
            (
                run.id,
                run.workflow,
                run.version,
                run.status,
                dump(run.input),
                dump(run.output),
                None,
                run.created_at,
                run.started_at,
                run.finished_at,
                None,
            ),
        )
    ]
    for s in steps:
        statements.append(
            (
                f"INSERT INTO steps (run_id, name, status, attempt, tries, started_at, "
                f"finished_at, next_at, request, output, error, reason) VALUES ({marks(12)})",
                (
                    run.id,
                    s.name,
                    s.status,
                    s.attempt,
                    s.tries,
                    s.started_at,
                    s.finished_at,
                    s.next_at,
                    dump(s.request),
                    dump(s.output),
                    None,
                    s.reason,
                ),
            )
        )
    for sql, params in statements:
        if sqlite:
            await store._call(store._execute, sql, params)
        else:
            await store.pool.execute(sql, *params)


async def test_an_old_database_is_refused_then_migrated_with_its_runs_intact(
    db_url: str, tmp_path: Path
) -> None:
    old = open_store(db_url)
    old.target = 1  # a database made by the Legato of issue 2
    await old.open()
    assert old.version == 1
    run = RunInfo("0" * 32, "w", 1, "succeeded", {"n": 1}, 10.0, 10.0, 11.0, output={"ok": True})
    step = StepState("a", "succeeded", 1, 1, 10.0, 11.0, output={"x": 1})
    await write_v1(old, run, [step])
    # A run that was waiting for an event: version 3 indexes its correlation and makes it due.
    waiting = RunInfo("1" * 32, "w", 1, "running", {}, 12.0, 12.0)
    listening = StepState("b", "waiting", 1, 1, 12.0, request={"event": "t", "key": "k"})
    await write_v1(old, waiting, [listening._replace(reason="event")])
    # A parent waiting for its child run: version 3 gives the child its parent.
    parent = RunInfo("2" * 32, "p", 1, "running", {}, 13.0, 13.0)
    child_ref: dict[str, Any] = {"run_id": "3" * 32, "workflow": "w", "version": None, "input": {}}
    waits = StepState("c", "waiting", 1, 1, 13.0, request=child_ref, reason="child")
    await write_v1(old, parent, [waits])
    await write_v1(old, RunInfo("3" * 32, "w", 1, "running", {}, 13.5, 13.5), [])
    await old.close()

    refused = open_store(db_url)
    with pytest.raises(
        LegatoError,
        match=f"has schema version 1; this Legato needs {SCHEMA_VERSION}: run `legato migrate",
    ):
        await refused.open()

    migrated = open_store(db_url, migrate=True)
    migrated.owner = "engine-1"
    await migrated.open()
    try:
        assert (migrated.found_version, migrated.version) == (1, SCHEMA_VERSION)
        state = await migrated.get_run(run.id)
        assert state is not None and state.info == run and state.steps == {"a": step}
        child = await migrated.get_run("3" * 32)
        assert child is not None and child.info.parent == (parent.id, "c", 1)
        # Version 5: the child knows its parent, root and depth; its root counts it.
        assert await rows_of(
            migrated, "SELECT id, parent_id, root, depth FROM runs ORDER BY id"
        ) == [
            ("0" * 32, None, None, 0),
            ("1" * 32, None, None, 0),
            ("2" * 32, None, None, 0),
            ("3" * 32, "2" * 32, "2" * 32, 1),
        ]
        assert await rows_of(migrated, "SELECT root, descendants FROM run_trees") == [("2" * 32, 1)]
        reached = await migrated.publish("t", "k", 20.0, lambda s, a: {"step": s}, None)
        assert reached == [waiting.id]
        # Every unfinished run is taken over by the first engine, in full (as after a crash).
        claimed = await migrated.claim(21.0, 10)
        assert sorted(
            (c.state.info.id, c.taken_over, [r.event for r in c.inbox]) for c in claimed
        ) == [
            (waiting.id, True, [{"step": "b"}]),
            (parent.id, True, []),
            ("3" * 32, True, []),
        ]
        await migrated.add_schedule("w", 100.0, 20.0)  # version 4's table
        assert [(r.workflow, r.next_start, r.paused) for r in await migrated.list_schedules()] == [
            ("w", 100.0, False)
        ]
        await migrated.add_audit(AuditRow(20.0, "ci", "POST", "/e/w", "w", 202, "10.0.0.1"))
        assert [(r.token, r.status) for r in await migrated.list_audit(None, None, None, 9)] == [
            ("ci", 202)
        ]  # version 8's table
        await migrated.put_user_secret("S", "v")  # version 7's table
        assert await migrated.get_user_secret("S") == "v"
        assert [n for n, _ in await migrated.list_user_secrets()] == ["S"]
        assert await migrated.claim_outbox("engine-1", 21.0, 10, 30.0) == []  # version 9's
        kept = KeptEvent("e1", "t", "other", {"d": 1}, 20.0, 9e9)  # version 2's table
        assert await migrated.publish("t", "other", 20.0, lambda s, a: {}, kept) == []
        assert await migrated.take_kept("t", "other", 21.0, waiting.id, "b", lambda e: e.data)
        fresh = open_store(other_db(db_url, tmp_path))
        await fresh.open()
        try:
            assert (fresh.found_version, fresh.version) == (0, SCHEMA_VERSION)
            assert await schema_of(fresh) == await schema_of(migrated)
        finally:
            await fresh.close()
            if not db_url.startswith("sqlite"):
                await migrated.pool.execute(  # type: ignore[attr-defined]
                    f'DROP SCHEMA "{fresh.schema}" CASCADE'  # type: ignore[attr-defined]
                )
    finally:
        await migrated.close()


async def test_a_newer_database_is_refused(db_url: str) -> None:
    store: Any = open_store(db_url)
    await store.open()
    bump = "UPDATE legato_meta SET value = '99' WHERE key = 'schema_version'"
    if db_url.startswith("sqlite"):
        await store._call(store._execute, bump, ())
    else:
        await store.pool.execute(bump)
    await store.close()
    with pytest.raises(LegatoError, match="newer than this Legato knows"):
        await open_store(db_url, migrate=True).open()


def test_legato_migrate_reports_the_versions(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    legato = [sys.executable, "-m", "legato.cli", "migrate", "--db", db]
    first = subprocess.run(legato, capture_output=True, text=True, timeout=60)
    done = f"schema version none -> {SCHEMA_VERSION}"
    assert first.returncode == 0 and first.stdout.strip() == done, first.stderr
    again = subprocess.run(legato, capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == f"schema version {SCHEMA_VERSION}: up to date"


async def test_an_older_legato_never_lowers_the_version_mark(db_url: str) -> None:
    newer = open_store(db_url)
    await newer.open()
    await newer.close()
    older = open_store(db_url)
    older.target = 1  # what a Legato that knows only version 1 would do on the same database
    await older.open()
    await older.close()
    again = open_store(db_url)
    await again.open()  # no "needs ...": the mark is still the latest
    try:
        assert again.found_version == SCHEMA_VERSION
    finally:
        await again.close()


async def test_attempts_come_back_in_the_same_order_on_every_backend(db_url: str) -> None:
    from legato.engine.state import Attempt

    store = open_store(db_url)
    await store.open()
    try:
        run = RunInfo("1" * 32, "w", 1, "failed", {}, 1.0)
        attempts = [
            Attempt(run.id, "b", 1, "failed", 5.0, 6.0, None, None, None),
            Attempt(run.id, "a", 2, "failed", 1.0, 2.0, None, None, None),
            Attempt(run.id, "a", 1, "cancelled", None, 0.5, None, None, None),
        ]
        await store.commit([Decision(run.id, "w", run, {}, attempts)])
        got = [(a.step, a.attempt) for a in await store.get_attempts(run.id)]
        assert got == [("a", 1), ("a", 2), ("b", 1)]  # never started (None) first, then by start
    finally:
        await store.close()


def test_a_schema_name_must_be_lower_case() -> None:
    with pytest.raises(LegatoError, match="lower-case letters"):
        open_store("postgresql://postgres@127.0.0.1/test?schema=Rev6_Up")
