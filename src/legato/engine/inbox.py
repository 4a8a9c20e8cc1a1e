"""Events as inbox rows: what reaches a run from outside (a callback, an event, a child's end, a
cancel or retry request) is written to the store first, so the engine that holds the run (or the
next one to claim it) applies it, whichever process received it."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from legato.engine.state import Callback, Cancel, ChildDone, Event, EventArrived, Retry

_KINDS: dict[str, type[Callback | EventArrived | ChildDone | Cancel | Retry]] = {
    "callback": Callback,
    "event": EventArrived,
    "child": ChildDone,
    "cancel": Cancel,
    "retry": Retry,
}
_NAMES = {cls: name for name, cls in _KINDS.items()}

Inboxed = Callback | EventArrived | ChildDone | Cancel | Retry


def encode(event: Inboxed) -> dict[str, Any]:
    return {"kind": _NAMES[type(event)], **asdict(event)}


def decode(body: dict[str, Any]) -> Event:
    cls = _KINDS[body["kind"]]
    known = {f.name for f in fields(cls)}  # a row written by another version may hold more
    return cls(**{k: v for k, v in body.items() if k in known})
