"""Live run views: a server-sent event stream of a run's status and its steps' statuses.

This process's committed decisions wake a stream at once (`Engine.subscribe`), but runs are also
moved by other processes (`legato worker` on a shared database), which this one never hears of; so a
stream also looks at the store every `POLL` seconds, and sends a snapshot only when it changed. A
stream ends with the run: an open one per browser tab would use up the browser's connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from legato.engine.runtime import Engine
from legato.engine.state import Decision
from legato.server.payloads import iso

POLL = 1.0
FINAL = frozenset({"succeeded", "failed", "cancelled"})
KEEPALIVE = 15.0  # a comment line now and then keeps proxies from closing an idle stream


class Live:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake: dict[str, set[asyncio.Event]] = {}
        # The last store read of each watched run, shared by its viewers: many pages open on one
        # run cost about one read a second, not one each. A decision here makes it stale at once.
        self._read: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._decisions = 0  # a read begun before a decision here is not kept for others
        engine.subscribe(self._observe)

    def _observe(self, decision: Decision) -> None:
        watching = self._wake.get(decision.run_id)
        if watching:
            self._decisions += 1
            self._read.pop(decision.run_id, None)
            for event in watching:
                event.set()

    async def snapshot(self, run_id: str) -> dict[str, Any] | None:
        """The run as this process holds it (ahead of the store by at most one commit), else as
        stored; None if there is no such run."""
        state = self.engine.live_run(run_id)
        seen = self._decisions
        if state is None:
            now = time.monotonic()
            cached = self._read.get(run_id)
            if cached is not None and now - cached[0] < POLL / 2:
                return cached[1]
            state = await self.engine.store.get_run(run_id)
        snap = None
        if state is not None:
            info = state.info
            snap = {
                "status": info.status,
                "finished_at": iso(info.finished_at),
                "steps": {n: [s.status, s.attempt] for n, s in state.steps.items()},
            }
        if run_id in self._wake and seen == self._decisions:
            self._read[run_id] = (time.monotonic(), snap)
        return snap

    async def stream(self, run_id: str) -> AsyncIterator[bytes]:
        wake = asyncio.Event()
        self._wake.setdefault(run_id, set()).add(wake)
        last: dict[str, Any] | None = None
        quiet = 0.0
        try:
            yield b"retry: 2000\n\n"
            while not self.engine.draining:
                snap = await self.snapshot(run_id)
                if snap is None:
                    return  # no such run (any more)
                if snap != last:
                    last, quiet = snap, 0.0
                    yield b"data: " + orjson.dumps(snap) + b"\n\n"
                if snap["status"] in FINAL:
                    return  # it ended: the page stops following (a retry opens a new stream)
                elif quiet >= KEEPALIVE:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), POLL)
                except TimeoutError:
                    quiet += POLL
        finally:
            watching = self._wake.get(run_id)
            if watching is not None:
                watching.discard(wake)
                if not watching:
                    del self._wake[run_id]
                    self._read.pop(run_id, None)
