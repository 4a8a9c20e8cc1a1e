"""Reads a workflow's `triggers`: the broker destinations whose messages start its runs.

`triggers: [{transport: bus, topic: orders, filter: "...", key: "...", input: {...}}]`, with
exactly one of `topic`, `subject` or `queue`. Whether the transport exists is checked where the
transports are known (the engine's registration), not here: a definition is data.
"""

from __future__ import annotations

import re
from typing import Any

from legato.errors import Problem
from legato.expressions import Template, TemplateError, compile_template
from legato.model.reader import Reader, join
from legato.model.workflow import DESTINATION_KINDS, Trigger

GROUP = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def read_triggers(raw: Any, path: str, problems: list[Problem]) -> tuple[Trigger, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(Problem(path, "must be a list of {transport, topic|subject|queue, ...}"))
        return ()
    found: list[Trigger] = []
    seen: set[tuple[str, str, str]] = set()
    for i, item in enumerate(raw):
        trigger = _read_one(item, join(path, i), problems)
        if trigger is None:
            continue
        where = (trigger.transport, trigger.kind, trigger.destination)
        if where in seen:
            problems.append(
                Problem(
                    join(path, i),
                    f"a second trigger on {trigger.kind} {trigger.destination!r} of transport "
                    f"{trigger.transport!r}: one trigger per destination (use its filter)",
                )
            )
            continue
        seen.add(where)
        found.append(trigger)
    return tuple(found)


def _read_one(data: Any, path: str, problems: list[Problem]) -> Trigger | None:
    r = Reader(data, path, problems)
    if not r.ok:
        return None
    transport = r.get("transport", str, None)
    if not transport or not transport.strip():
        r.problem("transport", "is required: the name of a transport the server was given")
    given = [k for k in DESTINATION_KINDS if r.has(k)]
    r.seen.update(DESTINATION_KINDS)
    destination: str | None = None
    if len(given) != 1:
        r.problem(
            None,
            "needs exactly one of `topic` (Kafka), `subject` (NATS) or `queue` (RabbitMQ)"
            + (f", not {' and '.join(given)}" if given else ""),
        )
    else:
        value = r.data[given[0]]
        if not isinstance(value, str) or not value.strip():
            r.problem(given[0], "must be a non-empty string")
        elif "{{" in value or "{%" in value:
            r.problem(given[0], "is where the trigger subscribes: a fixed name, not a template")
        else:
            destination = value
    checks = [_template(r, key) for key in ("filter", "key", "input")]
    group = r.get("group", str, None)
    if group is not None and not GROUP.fullmatch(group):
        r.problem("group", "must be 1-128 letters, digits, '_', '.', ':' or '-'")
        group = None
    r.done()
    if not transport or destination is None or any(ok is False for ok, _ in checks):
        return None
    (_, filter_), (_, key), (_, input_) = checks
    return Trigger(transport, given[0], destination, filter_, key, input_, group)


def _template(r: Reader, key: str) -> tuple[bool, Template | None]:
    if not r.has(key) or r.raw(key) is None:
        r.seen.add(key)
        return True, None
    try:
        return True, compile_template(r.raw(key))
    except TemplateError as exc:
        r.problem(key, str(exc))
        return False, None
