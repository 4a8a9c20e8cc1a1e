"""Which notifications a decision causes, as outbox rows: pure, no I/O.

The runtime (and the scheduler, for the first decision of an interval's run) attaches them to the
decision, so the store writes them in the same transaction as the change that causes them: a crash
after the commit cannot lose one, and a decision that is not committed sends none. The notifier
delivers them afterwards (engine/notifier.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from legato.engine.state import FAILED, SUCCEEDED, WAITING, Decision, Outgoing, RunInfo
from legato.model.workflow import Notify


def events_of(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    """The notifiable things a decision says: the run failed or succeeded, or a step failed and
    waits to be tried again."""
    found: list[tuple[str, dict[str, Any]]] = []
    for s in decision.steps.values():
        if s.status == WAITING and s.error is not None and s.next_at is not None:
            found.append(
                (
                    "retry",
                    {"step": s.name, "attempt": s.attempt, "error": s.error, "next_at": s.next_at},
                )
            )
    run = decision.run
    if run is not None and run.status in (FAILED, SUCCEEDED) and run.finished_at is not None:
        found.append(("failure" if run.status == FAILED else "success", {}))
    return found


def outgoing(
    notify: Notify, decision: Decision, run: RunInfo | None, new_id: Callable[[], str]
) -> list[Outgoing]:
    """One outbox row per channel that wants one of the decision's events. `run`: the run as
    known before the decision (for the version and error when the decision does not change the
    run itself); `new_id` makes delivery ids (passed in: the core has no randomness of its own)."""
    if not (notify.email or notify.webhooks):
        return []
    rows: list[Outgoing] = []
    for event, detail in events_of(decision):
        info = decision.run or run
        payload: dict[str, Any] = {
            "event": event,
            "run_id": decision.run_id,
            "workflow": decision.workflow,
            **detail,
        }
        if info is not None:
            payload.update(status=info.status, version=info.version)
            payload.setdefault("error", info.error)  # a retry's is its step's
        if notify.email and event in notify.email_on:
            target = ", ".join(notify.email)
            rows.append(_row(new_id(), decision.run_id, event, "email", target, payload))
        for hook in notify.webhooks:
            if event in hook.on:
                rows.append(_row(new_id(), decision.run_id, event, "webhook", hook.url, payload))
    return rows


def new_delivery_id() -> str:
    """Unique across processes and restarts (a receiver dedupes on it)."""
    return uuid.uuid4().hex


def _row(
    delivery_id: str, run_id: str, event: str, channel: str, target: str, payload: dict[str, Any]
) -> Outgoing:
    # The delivery id is in the body too, so the webhook signature covers it.
    body = {**payload, "delivery_id": delivery_id}
    return Outgoing(delivery_id, run_id, event, channel, target, body)
