"""The notification outbox on both backends: rows are written with the decision that causes them,
each try of one notification carries the same delivery id, a receiver that hangs holds up nothing
else, a scheduled run failing in its first step's template is notified, claims are leases, and two
engines sharing PostgreSQL deliver each notification once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import orjson
import pytest
from aiohttp import web

from legato import Engine
from legato.engine.notifier import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from legato.engine.state import Decision, Outgoing, RunInfo
from legato.store.protocol import NotificationRow, Store, open_store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Hooks:
    """Webhook receivers on loopback: `/ok` answers 200, `/fail/<n>` 500 to its first n requests,
    `/hang` (and `/hang/...`) never answers (until the test ends)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], bytes, float]] = []
        self.counts: dict[str, int] = {}
        self.release = asyncio.Event()
        self.base = ""
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.path, dict(request.headers), body, time.monotonic()))
        n = self.counts[request.path] = self.counts.get(request.path, 0) + 1
        if request.path.startswith("/hang"):
            await self.release.wait()
        if request.path.startswith("/fail/") and n <= int(request.path.rsplit("/", 1)[1]):
            return web.Response(status=500)
        return web.Response()

    def at(self, path: str) -> list[tuple[dict[str, str], Any]]:
        return [(h, orjson.loads(b)) for p, h, b, _ in self.seen if p == path]

    def under(self, prefix: str) -> int:
        return sum(1 for p, *_ in self.seen if p.startswith(prefix))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    await h.start()
    yield h
    await h.stop()


async def recorded(engine: Engine, run_id: str, count: int, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await engine.store.list_notifications(run_id)
        if len(rows) >= count:
            return rows
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.05)


def failing(name: str, *hooks: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "webhooks": [{"url": url, "on": ["failure"]} for url in hooks],
        "steps": {"boom": {"fail": {"message": "no"}}},
        **extra,
    }


async def test_every_try_carries_the_same_delivery_id_and_a_valid_signature(
    db_url: str, hooks: Hooks
) -> None:
    async with Engine.open(db_url) as engine:
        engine.notifier.backoff = 0.05
        await engine.apply(failing("retried", f"{hooks.base}/fail/2"))
        run = await engine.run("retried", timeout=10)
        [row] = await recorded(engine, run.info.id, 1)
        secret = engine.notifier.secret
    assert (row.event, row.ok, row.tries) == ("failure", True, 3)
    tries = hooks.at("/fail/2")
    assert len(tries) == 3
    assert {h[DELIVERY_HEADER] for h, _ in tries} == {row.delivery_id}
    assert all(body["delivery_id"] == row.delivery_id for _, body in tries)  # signed with it
    for _path, headers, body, _ in hooks.seen:
        assert headers[SIGNATURE_HEADER] == sign(secret, headers[TIMESTAMP_HEADER], body)


async def test_a_hanging_receiver_holds_up_nothing_else(db_url: str, hooks: Hooks) -> None:
    good = Hooks()  # another host: one host's paths share its slots
    await good.start()
    async with Engine.open(db_url) as engine:
        engine.notifier.timeout = 1.0
        engine.notifier.tries = 2
        engine.notifier.backoff = 0.05
        await engine.apply(failing("hung", f"{hooks.base}/hang", f"{good.base}/ok"))
        began = time.monotonic()
        first = await engine.run("hung", timeout=10)
        assert time.monotonic() - began < 1.0  # the run did not wait for its notifications
        more = [await engine.run("hung", timeout=10) for _ in range(5)]
        # The good receiver hears of each run at once, while the other hangs.
        deadline = time.monotonic() + 5
        while len(good.at("/ok")) < 6:
            assert time.monotonic() < deadline, good.counts
            await asyncio.sleep(0.02)
        assert time.monotonic() - began < 1.0
        rows = await recorded(engine, first.info.id, 2)
        assert all(r.info.status == "failed" for r in more)
    await good.stop()
    by = {r.target.rsplit("/", 1)[1]: r for r in rows}
    assert (by["ok"].ok, by["ok"].tries) == (True, 1)
    assert (by["hang"].ok, by["hang"].tries) == (False, 2)
    assert by["hang"].error == "no answer within 1s"


async def test_a_scheduled_run_that_fails_in_its_first_template_is_notified(
    db_url: str, hooks: Hooks
) -> None:
    async with Engine.open(db_url) as engine:
        await engine.apply(
            {
                "name": "nightly-bad",
                "schedule": "1s",
                "start_date": time.time() - 0.5,
                "webhooks": [{"url": f"{hooks.base}/ok", "on": ["failure"]}],
                "steps": {
                    "first": {
                        "python": {"function": "json:dumps", "args": {"obj": "{{ input.no.x }}"}}
                    }
                },
            }
        )
        deadline = time.monotonic() + 10
        while not hooks.at("/ok"):
            assert time.monotonic() < deadline, "no failure notification"
            await asyncio.sleep(0.05)
        await engine.pause_schedule("nightly-bad", True)
        headers, body = hooks.at("/ok")[0]
        run = await engine.get_run(body["run_id"])
        assert run.info.status == "failed" and body["event"] == "failure"
        assert "no" in body["error"]["message"]
        [row] = await recorded(engine, run.info.id, 1)
        assert row.ok and row.delivery_id == headers[DELIVERY_HEADER]


def _outgoing(run_id: str, n: int) -> Outgoing:
    return Outgoing(f"d-{run_id}-{n}", run_id, "failure", "webhook", "http://x/", {"n": n})


async def test_outbox_rows_are_written_with_their_decision_and_claimed_as_leases(
    db_url: str,
) -> None:
    store = open_store(db_url)
    store.owner = "engine-a"
    await store.open()
    try:
        info = RunInfo("r" * 32, "w", 1, "failed", {}, 1.0, 1.0, 2.0)
        decision = Decision(info.id, "w", info, new_run=True, outbox=[_outgoing(info.id, 1)])
        await store.commit([decision])
        assert await store.run_status(info.id) == "failed"
        now = time.time() + 1
        [item] = await store.claim_outbox("a", now, 10, 30.0)
        assert (item.delivery_id, item.payload, item.attempts) == (f"d-{info.id}-1", {"n": 1}, 1)
        assert await store.next_outbox() == pytest.approx(now + 30.0)
        if store.shared:  # another engine waits for the lease to run out
            assert await store.claim_outbox("b", now, 10, 30.0) == []
            [again] = await store.claim_outbox("b", now + 31, 10, 30.0)
        else:  # one engine per file: a row another claimant holds is a dead process's
            [again] = await store.claim_outbox("b", now, 10, 30.0)
        assert (again.id, again.attempts) == (item.id, 2)
        assert not await store.settle_outbox(item.id, "a", retry_at=now)  # "a" lost it
        assert await store.settle_outbox(item.id, "b", retry_at=now + 5, error="down")
        assert await store.claim_outbox("b", now, 10, 30.0) == []
        [third] = await store.claim_outbox("b", now + 5, 10, 30.0)
        assert (third.attempts, third.error) == (3, "down")
        record = NotificationRow(info.id, "failure", "webhook", "http://x/", True, 3, None, now)
        assert await store.settle_outbox(item.id, "b", record=record)
        assert await store.next_outbox() is None
        [row] = await store.list_notifications(info.id)
        assert row == record
    finally:
        await store.close()


async def test_two_engines_on_postgres_deliver_each_notification_once(
    shared_db: str, hooks: Hooks
) -> None:
    one, two = Engine.open(shared_db), Engine.open(shared_db)
    async with one, two:
        for engine in (one, two):
            engine.notifier.poll = 0.2  # each looks often at what the other wrote
        await one.apply(failing("twice", f"{hooks.base}/ok"))
        ids = [await (one if i % 2 else two).start_run("twice") for i in range(20)]
        deadline = time.monotonic() + 20
        while len(hooks.at("/ok")) < 20:
            assert time.monotonic() < deadline, len(hooks.at("/ok"))
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # time for a second delivery, if one were coming
        rows = [await recorded(one, i, 1) for i in ids]
    bodies = [body for _, body in hooks.at("/ok")]
    assert sorted(b["run_id"] for b in bodies) == sorted(ids)  # each run's failure, once
    assert len({h[DELIVERY_HEADER] for h, _ in hooks.at("/ok")}) == 20
    assert all(len(r) == 1 and r[0].ok and r[0].tries == 1 for r in rows)


async def test_a_row_a_dead_engine_held_is_delivered_by_another_once_its_lease_ends(
    shared_db: str, hooks: Hooks
) -> None:
    ghost = open_store(shared_db)
    ghost.owner = "ghost"
    await ghost.open()
    info = RunInfo("g" * 32, "orphan", 1, "failed", {}, 1.0, 1.0, 2.0)
    row = Outgoing("dead-1", info.id, "failure", "webhook", f"{hooks.base}/ok", {"event": "x"})
    await ghost.commit([Decision(info.id, "orphan", info, new_run=True, outbox=[row])])
    claimed_at = time.monotonic()
    [_] = await ghost.claim_outbox("ghost", time.time(), 10, 1.5)  # then it dies mid-send
    await ghost.close()
    async with Engine.open(shared_db) as engine:
        engine.notifier.poll = 0.1
        [rec] = await recorded(engine, info.id, 1)
    [(_, headers, _, arrived)] = hooks.seen
    assert arrived >= claimed_at + 1.4  # not before the dead engine's lease ran out
    assert headers[DELIVERY_HEADER] == "dead-1" == rec.delivery_id
    assert (rec.ok, rec.tries) == (True, 2)


class Counted:
    """The store, counting the notifier's claims."""

    def __init__(self, store: Store) -> None:
        self.store, self.claims = store, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def claim_outbox(self, *args: Any) -> Any:
        self.claims += 1
        return await self.store.claim_outbox(*args)


async def test_a_hanging_receiver_with_many_due_holds_up_no_other_receiver(db_url: str) -> None:
    """120 failures to a receiver that hangs, spread over 8 of its paths (10 s timeout, 32 slots),
    and then one failure of another workflow to a healthy receiver: without a bound per receiver
    the hanging one held all the slots and the healthy one waited 10 s per round; now the hanging
    host holds at most PER_TARGET, whatever paths it is called at."""
    hanging, healthy = Hooks(), Hooks()
    await hanging.start()
    await healthy.start()
    try:
        async with Engine.open(db_url) as engine:
            paths = [f"{hanging.base}/hang/{i}" for i in range(8)]
            await engine.apply(failing("to-hang", *paths))
            await engine.apply(failing("to-ok", f"{healthy.base}/ok"))
            for _ in range(15):
                await engine.start_run("to-hang")
            deadline = time.monotonic() + 10
            while hanging.under("/hang") < engine.notifier.per_target:
                assert time.monotonic() < deadline, hanging.counts
                await asyncio.sleep(0.02)
            began = time.monotonic()
            await engine.start_run("to-ok")
            while not healthy.at("/ok"):
                assert time.monotonic() - began < 2.0, (hanging.counts, len(engine.notifier.tasks))
                await asyncio.sleep(0.02)
            assert hanging.under("/hang") == engine.notifier.per_target == 4
            # The rows it skips do not make the loop spin: it waits for a send to end.
            counted = Counted(engine.notifier.store)
            engine.notifier.store = cast(Store, counted)
            await asyncio.sleep(1.0)
            assert counted.claims <= 3, counted.claims
    finally:
        await hanging.stop()
        await healthy.stop()


async def test_a_claim_takes_at_most_the_bound_per_receiver(db_url: str) -> None:
    store = open_store(db_url)
    store.owner = "engine-a"
    await store.open()
    try:
        info = RunInfo("q" * 32, "w", 1, "failed", {}, 1.0, 1.0, 2.0)
        rows = [  # one host: other paths and queries make no other receiver
            Outgoing(f"d-{n}", info.id, "failure", "webhook", f"http://A/hook/{n % 3}?n={n}", {})
            for n in range(10)
        ]
        rows.append(Outgoing("d-b", info.id, "failure", "webhook", "http://b/hook", {}))
        rows += [Outgoing(f"m-{n}", info.id, "failure", "email", "x@y", {}) for n in range(3)]
        await store.commit([Decision(info.id, "w", info, new_run=True, outbox=rows)])
        now = time.time() + 1
        first = await store.claim_outbox("a", now, 32, 30.0, 4, {"email:": 1})
        assert len(first) == 8, [i.target for i in first]
        assert [i.target for i in first].count("x@y") == 3  # 4 less the one in flight
        assert "http://b/hook" in [i.target for i in first]
        assert [i.target for i in first if i.target.startswith("http://A/")] == [
            f"http://A/hook/{n % 3}?n={n}" for n in range(4)
        ]
        busy = {"http://a": 4, "email:": 4}
        assert await store.claim_outbox("a", now, 32, 30.0, 4, busy) == []
        more = await store.claim_outbox("a", now + 31, 32, 30.0, 4, {"http://a": 2})
        assert sum(i.target.startswith("http://A/") for i in more) == 2
    finally:
        await store.close()
