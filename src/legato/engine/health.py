"""Readiness: can this process read and commit to its store right now (and, for a worker, keep its
leases)? `/readyz` answers from what this keeps, so a probe costs no database call.

A background task writes and reads back a tiny row every `every` seconds; the engine reports how its
commits and lease renewals went. The process is ready while the last probe succeeded recently, no
commit is failing, and (a worker) its last renewal is younger than a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legato.store.faults import TROUBLE, failed, log, unavailable


@dataclass(slots=True)
class Check:
    ok: bool = False
    at: float = 0.0  # monotonic time of the last outcome
    last_ok: float = 0.0
    detail: str = "not yet checked"


class Health:
    def __init__(
        self,
        probe: Callable[[], Any],
        *,
        every: float = 1.0,
        lease: float = 30.0,
        worker: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe  # an async callable that writes and reads back a row
        self.every = every
        self.lease = lease
        self.worker = worker
        self.clock = clock
        self.checks: dict[str, Check] = {}
        self._task: asyncio.Task[None] | None = None
        self._store_back: asyncio.Event | None = None

    async def pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less: until the probe finds a failing store answering again.
        A commit retried on that cue goes in (and clears "commit") about a probe after the store
        is back, not after a backoff of up to 5 s on top of it."""
        if self._store_back is None:
            self._store_back = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._store_back.wait()

    def ok(self, what: str) -> None:
        check = self.checks.setdefault(what, Check())
        was_failing = check.at and not check.ok
        now = self.clock()
        check.ok, check.at, check.last_ok, check.detail = True, now, now, "ok"
        if was_failing and all(c.ok for c in self.checks.values()):
            TROUBLE.recovered()
        if what == "store" and was_failing and self._store_back is not None:
            self._store_back.set()
            self._store_back = None

    def failed(self, what: str, exc: BaseException) -> None:
        check = self.checks.setdefault(what, Check())
        check.ok, check.at = False, self.clock()
        fault = unavailable(exc)
        if fault is not None:
            check.detail = f"{fault.detail} ({fault.kind})"
        else:
            check.detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def failing(self, what: str) -> str | None:
        """What is wrong with `what` ("commit", "store", "renew") if its last try failed."""
        check = self.checks.get(what)
        return check.detail if check is not None and check.at and not check.ok else None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._probe_forever(), name="legato-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _probe_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(max(self.every * 2, 2.0)):
                    await self.probe()
            except Exception as exc:
                self.failed("store", exc)
                failed(log, exc, "readiness probe failed")
            else:
                self.ok("store")
            await asyncio.sleep(self.every)

    def readiness(self, draining: bool = False) -> tuple[bool, dict[str, Any]]:
        """(ready, the body of /readyz saying why not)."""
        now = self.clock()
        reasons: list[str] = []
        if draining:
            reasons.append("draining: this process is stopping")
        store = self.checks.get("store")
        if store is None or not store.at:
            reasons.append("the store has not been checked yet")
        elif not store.ok:
            reasons.append(f"cannot read and write the store: {store.detail}")
        elif now - store.last_ok > max(self.every * 3, 3.0):
            reasons.append(f"the store last answered {now - store.last_ok:.1f} s ago")
        commit = self.checks.get("commit")
        if commit is not None and not commit.ok:
            reasons.append(f"commits are failing: {commit.detail}")
        renew = self.checks.get("renew")
        if self.worker and renew is not None:
            if not renew.ok:
                reasons.append(f"cannot renew leases: {renew.detail}")
            elif now - renew.last_ok > self.lease:
                reasons.append(f"leases last renewed {now - renew.last_ok:.1f} s ago")
        body: dict[str, Any] = {
            "status": "not ready" if reasons else "ready",
            "checks": {
                name: {
                    "ok": c.ok,
                    "detail": c.detail,
                    "age": round(now - c.at, 3) if c.at else None,
                }
                for name, c in self.checks.items()
            },
        }
        if reasons:
            body["reasons"] = reasons
        return not reasons, body
