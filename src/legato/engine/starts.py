"""Starts that happen at most once: an Idempotency-Key, or a run id the caller chose.

A client that retries a start after a timeout must not make a second run: the same key with the
same request answers the run the first made (for `ttl` seconds, 24 h by default), the same key
with another request is refused. A caller's run id (like a Temporal workflow id) is used once: a
second start with it is refused whether that run is live or has ended. Both are decided by the
store in the transaction that inserts the run (`Store.start_once`); the run is then held by nobody
and a worker claims it at once, like a scheduled run.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from legato.engine.bugs import log_decide_failure
from legato.engine.decider import decide
from legato.engine.ids import MARKER, reserved
from legato.engine.outbox import new_delivery_id, outgoing
from legato.engine.state import Decision, RunInfo, RunState, Start
from legato.errors import Conflict, LegatoError
from legato.model.workflow import Workflow
from legato.store.starts import StartKey

if TYPE_CHECKING:
    from legato.engine.runtime import Engine

log = logging.getLogger("legato.engine")

DEFAULT_TTL = 24 * 3600.0
PURGE_EVERY = 60.0
# A caller's run id has the form of the ids Legato makes: they order listings and serve as the
# W3C trace id of the run's calls.
RUN_ID = re.compile(r"[0-9a-f]{32}")
# Printable ASCII without spaces at the ends, as HTTP header values carry safely.
KEY = re.compile(r"[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?")


class KeyReused(LegatoError):
    """The Idempotency-Key was used before with another request."""


@dataclass(slots=True)
class Once:
    """What makes a start happen once: `key` (an Idempotency-Key, with `digest` the request's)
    and/or `run_id`. `replayed` is set when the start answered an earlier run."""

    key: str | None = None
    digest: str = ""
    run_id: str | None = None
    replayed: bool = False
    created_at: float | None = None  # the new run's, as stored (not live here: claimed later)


def check_run_id(value: object) -> str | None:
    """The problem with a caller's run id, if any."""
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        return "must be 32 lowercase hex digits (the form of every run id)"
    if value == "0" * 32:
        return "must not be all zeros (not a valid trace id)"
    if reserved(value):
        return (
            f"must not have {MARKER!r} as its 13th digit: that form is reserved for the ids "
            "Legato makes (a UUID's hex never has it)"
        )
    return None


def check_key(value: str) -> str | None:
    if not KEY.fullmatch(value):
        return "must be 1 to 255 printable ASCII characters"
    return None


def first_decision(wf: Workflow, info: RunInfo, now: float) -> Decision:
    """A new run's first decision, for a start the store commits on its own (held by nobody)."""
    try:
        decision = decide(wf, RunState(info), Start(), now, random.random())
    except Exception as exc:  # a decider bug ends the run visibly, never a 500
        from legato.engine.runtime import _broken

        log_decide_failure(info.id, Start(), exc)
        decision = _broken(RunState(info), exc, now)
    decision.new_run = True
    decision.outbox = outgoing(wf.notify, decision, info, new_delivery_id)
    return decision


class Starts:
    """An engine's once-only starts: their key lifetime and the purge of expired keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ttl = DEFAULT_TTL
        self._purged = 0.0

    async def start(self, wf: Workflow, info: RunInfo, once: Once) -> str:
        engine = self.engine
        now = engine.clock()
        decision = first_decision(wf, info, now)
        key = None
        if once.key is not None:
            key = StartKey(info.workflow, once.key, once.digest, now + self.ttl)
        outcome = await engine.store.start_once(decision, key, now)
        self._purge_soon(now)
        if outcome.started:
            once.created_at = info.created_at
            engine.started_elsewhere(decision)
            return info.id
        if outcome.key_digest is not None:
            if outcome.key_digest != once.digest:
                raise KeyReused(
                    f"was used with another request for workflow {info.workflow!r} "
                    f"(it started run {outcome.run_id}); use a new key for a new request"
                )
            once.replayed = True
            return outcome.run_id
        if outcome.run_status in ("pending", "running", "waiting"):
            raise Conflict(f"run {outcome.run_id} exists and has not ended ({outcome.run_status})")
        raise Conflict(
            f"run {outcome.run_id} exists and has ended ({outcome.run_status}); "
            "a run id is used once (retry that run, or choose another id)"
        )

    def _purge_soon(self, now: float) -> None:
        if now - self._purged < PURGE_EVERY:
            return
        self._purged = now
        self.engine._background_task(None, self._purge(now))

    async def _purge(self, now: float) -> None:
        try:
            gone = await self.engine.store.purge_start_keys(now)
        except Exception as exc:  # the next start tries again; expired keys count for nothing
            log.warning("purging expired idempotency keys failed: %s", exc)
            return
        if gone:
            log.info("purged %d expired idempotency keys", gone)
