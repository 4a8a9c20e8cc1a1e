"""How long the audit log is kept (`--audit-retention`, 90 days by default): an API server deletes
older rows itself, in small batches so that no delete holds the database for long, at start and
every ten minutes (or twice per retention, if that is shorter)."""

from __future__ import annotations

import asyncio
import logging
import time

from legato.store.protocol import Store

log = logging.getLogger("legato.server")

DEFAULT_AUDIT_RETENTION = 90 * 86400.0
PRUNE_EVERY = 600.0
BATCH = 1000
PAUSE = 0.05  # between batches: other writers get the database


async def prune_audit(
    store: Store, keep: float, now: float | None = None, batch: int = BATCH
) -> int:
    """Delete the audit rows older than `keep` seconds; how many."""
    before = (time.time() if now is None else now) - keep
    gone = 0
    while True:
        done = await store.prune_audit(before, batch)
        gone += done
        if done < batch:
            return gone
        await asyncio.sleep(PAUSE)


async def prune_forever(store: Store, keep: float) -> None:
    every = min(PRUNE_EVERY, keep / 2)
    while True:
        try:
            gone = await prune_audit(store, keep)
        except Exception as exc:  # the store is down: the next round tries again
            log.warning("pruning the audit log failed: %s", exc)
        else:
            if gone:
                log.info("pruned %d audit rows older than %.0f s", gone, keep)
        await asyncio.sleep(every)
