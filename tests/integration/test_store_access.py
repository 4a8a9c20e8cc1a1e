"""Sessions and audit rows in each backend (schema version 8): the same answers from SQLite and
PostgreSQL."""

from __future__ import annotations

from legato.store.access import AuditRow, SessionRow
from legato.store.protocol import open_store


async def test_sessions_are_found_by_key_dropped_and_purged_once_expired(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        await store.add_session(SessionRow("k1", "ci", "f1", 10.0, 20.0))
        assert await store.get_session("k1") == SessionRow("k1", "ci", "f1", 10.0, 20.0)
        assert await store.get_session("k2") is None
        await store.add_session(SessionRow("k2", "ops", "f2", 30.0, 90.0))  # k1 expired: purged
        assert await store.get_session("k1") is None
        await store.drop_session("k2")
        assert await store.get_session("k2") is None
    finally:
        await store.close()


async def test_audit_rows_come_back_newest_first_filtered_and_paged(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        for i in range(6):
            token = "ci" if i % 2 else "ops"
            await store.add_audit(AuditRow(float(i), token, "POST", f"/p{i}", None, 200, "::1"))
        every = await store.list_audit(None, None, None, 100)
        assert [r.path for r in every] == ["/p5", "/p4", "/p3", "/p2", "/p1", "/p0"]
        assert every[0].client == "::1" and every[0].target is None and every[0].id > 0
        ci = await store.list_audit(None, "ci", None, 2)
        assert [r.path for r in ci] == ["/p5", "/p3"]
        rest = await store.list_audit(None, "ci", ci[-1].id, 2)
        assert [r.path for r in rest] == ["/p1"]
        assert [r.path for r in await store.list_audit(4.0, None, None, 100)] == ["/p5", "/p4"]
        assert [r.path for r in await store.list_audit(1.0, "ops", every[1].id, 9)] == ["/p2"]
    finally:
        await store.close()


async def test_old_audit_rows_are_pruned_in_batches_oldest_first(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    try:
        for i in range(7):
            await store.add_audit(AuditRow(float(i), "ci", "POST", f"/p{i}", None, 200, None))
        assert await store.prune_audit(5.0, 3) == 3
        assert await store.prune_audit(5.0, 3) == 2
        assert await store.prune_audit(5.0, 3) == 0
        assert [r.path for r in await store.list_audit(None, None, None, 100)] == ["/p6", "/p5"]
    finally:
        await store.close()
