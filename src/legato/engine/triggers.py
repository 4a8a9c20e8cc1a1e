"""Broker messages that start runs: each workflow's `triggers`, subscribed on its transports.

A message is rendered against its trigger: `filter` (falsy: acknowledged, no run), `key` (the dedupe
key, by default the broker's message id) and `input` (by default the message). The run is then
inserted with a receipt (workflow, key) in one transaction (`Store.start_triggered`), and only once
that transaction has committed does the handler return, so the transport acknowledges the message
(a NATS ack, an AMQP ack, a Kafka offset commit). A crash in between redelivers the message, whose
receipt then names the run it started: one run per key, however often the broker delivers it.

A message that can never start a run (a template that fails on it, an input the workflow refuses,
no key) is acknowledged and counted as rejected, with the reason logged and kept in a short list:
retrying it would block its partition or queue forever. A store that is down is the opposite: the
handler raises, the message is not acknowledged, and the broker delivers it again later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from legato.engine.ids import new_run_id
from legato.engine.starts import first_decision
from legato.engine.state import PENDING, RunInfo
from legato.errors import DefinitionError, InputError, NotFound, Problem
from legato.expressions import TemplateError, evaluate_truth
from legato.model.fields import check_object
from legato.model.workflow import Trigger, Workflow
from legato.store.faults import store_fault
from legato.store.receipts import Receipt
from legato.transports import Message

if TYPE_CHECKING:
    from legato.engine.runtime import Engine

log = logging.getLogger("legato.triggers")

# A key longer than this, or holding characters a store may refuse (NUL, other control characters,
# lone surrogates), is stored as `sha256:<hex>` of its UTF-8: dedupe still works, the size stays
# bounded, and no producer's header can make the store refuse the receipt (which would redeliver the
# message forever, blocking what comes after it).
PLAIN_KEY = 256
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Bytes of a message's body, and of the run input it renders: the default --max-body of an API start.
MAX_MESSAGE = 1024 * 1024
KEPT_REJECTIONS = 100
# Tests only: exit the process right after a trigger's run is committed and before the message is
# acknowledged, as a kill -9 there would (tests/integration/test_trigger_crash.py).
CRASH_ENV = "LEGATO_TEST_EXIT_AFTER_TRIGGER_COMMIT"


class Rejected(Exception):
    """This message can never start a run; the reason is the message."""


def context(message: Message) -> dict[str, Any]:
    """What a trigger's templates see: the body as JSON (or as text when it is not JSON)."""
    try:
        body: Any = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        body = message.data.decode("utf-8", "replace")
    return {
        "message": body,
        "headers": dict(message.headers),
        "destination": message.destination,
        "key": message.key,
        "id": message.id,
    }


def group_of(workflow: str, trigger: Trigger) -> str:
    return trigger.group or f"legato.{workflow}"


def unknown_transports(wf: Workflow, known: set[str]) -> list[Problem]:
    have = ", ".join(sorted(known)) or "none (start the server with --transport NAME=URL)"
    return [
        Problem(
            f"triggers[{i}].transport",
            f"no transport named {t.transport!r}; this server has: {have}",
        )
        for i, t in enumerate(wf.triggers)
        if t.transport not in known
    ]


class Triggers:
    """An engine's trigger subscriptions, their counters and the last rejected messages."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.active = False  # subscribing only once the engine runs
        self.subscribed: dict[tuple[str, str, str, str], str] = {}  # -> kind
        self.stats = {"started": 0, "duplicate": 0, "rejected": 0, "filtered": 0}
        # Per trigger (workflow, transport, destination): what its messages came to, so a key that
        # swallows runs (the same key for every message) shows as its `duplicate` count.
        self.counts: dict[tuple[str, str, str], dict[str, int]] = {}
        self.rejected: deque[dict[str, Any]] = deque(maxlen=KEPT_REJECTIONS)

    async def start(self) -> None:
        """Subscribe the triggers of every workflow's latest version."""
        self.active = True
        for record in await self.engine.store.list_workflows():
            try:
                wf = await self.engine._workflow(record.name)
            except (NotFound, DefinitionError) as exc:
                log.warning("workflow %s: its triggers are not subscribed: %s", record.name, exc)
                continue
            await self.subscribe(wf)

    async def subscribe(self, wf: Workflow) -> None:
        """Subscribe the triggers of `wf` not yet subscribed (a registration while running)."""
        if not self.active:
            return
        for trigger in wf.triggers:
            transport = self.engine.transports.get(trigger.transport)
            if transport is None:  # registered by a process with other transports
                log.warning(
                    "workflow %s: no transport named %r here; its trigger on %s is not subscribed",
                    wf.name,
                    trigger.transport,
                    trigger.destination,
                )
                continue
            group = group_of(wf.name, trigger)
            ident = (wf.name, trigger.transport, trigger.destination, group)
            if ident in self.subscribed:
                continue
            self.subscribed[ident] = trigger.kind
            try:
                await transport.subscribe(
                    trigger.destination, self._handler(wf.name, trigger), group
                )
            except Exception:
                del self.subscribed[ident]
                raise

    def listing(self) -> list[dict[str, Any]]:
        return [
            {
                "workflow": w,
                "transport": t,
                kind: d,
                "group": g,
                "messages": self.counts_of(w, t, d),
            }
            for (w, t, d, g), kind in sorted(self.subscribed.items())
        ]

    def count(self, workflow: str, transport: str, destination: str, outcome: str) -> None:
        self.stats[outcome] += 1
        per = self.counts.setdefault(
            (workflow, transport, destination), dict.fromkeys(self.stats, 0)
        )
        per[outcome] += 1

    def counts_of(self, workflow: str, transport: str, destination: str) -> dict[str, int]:
        return dict(
            self.counts.get((workflow, transport, destination), dict.fromkeys(self.stats, 0))
        )

    def _handler(self, workflow: str, trigger: Trigger) -> Callable[[Message], Awaitable[None]]:
        async def handle(message: Message) -> None:
            await self.on_message(workflow, trigger.transport, trigger.destination, message)

        return handle

    async def on_message(
        self, workflow: str, transport: str, destination: str, message: Message
    ) -> None:
        """Start the message's run (or find the one it started); return once that is durable."""
        try:
            wf, version = await self.engine.workflow_version(workflow)
        except (NotFound, DefinitionError) as exc:  # a stored version this Legato cannot build
            gone = Trigger(transport, "", destination)
            self._reject(workflow, gone, message, f"the workflow cannot be loaded: {exc}")
            return
        trigger = next(
            (t for t in wf.triggers if (t.transport, t.destination) == (transport, destination)),
            None,
        )
        if trigger is None:  # the latest version dropped this trigger: nothing starts
            self.count(workflow, transport, destination, "filtered")
            return
        try:
            started = await self._start(wf, version, trigger, message)
        except Rejected as exc:
            self._reject(workflow, trigger, message, str(exc))
            return
        if started is None:
            self.count(workflow, transport, destination, "filtered")

    async def _start(
        self, wf: Workflow, version: int, trigger: Trigger, message: Message
    ) -> str | None:
        try:
            checked = _checked(wf, trigger, message)
        except Rejected:
            raise
        except Exception as exc:  # anything a message makes fail would fail on every delivery
            raise Rejected(f"checking the message failed: {type(exc).__name__}: {exc}") from None
        if checked is None:
            return None
        key, data = checked
        engine = self.engine
        now = engine.clock()
        info = RunInfo(new_run_id(), wf.name, version, PENDING, data, created_at=now)
        decision = first_decision(wf, info, now)
        receipt = Receipt(wf.name, key, f"{trigger.transport}:{trigger.destination}")
        try:
            outcome = await engine.store.start_triggered(decision, receipt, now)
        except Exception as exc:
            if not data_error(exc):
                raise  # the store is down (or a bug): not acknowledged, delivered again later
            raise Rejected(f"the store refused the message's run: {exc}") from None
        if os.environ.get(CRASH_ENV):
            os._exit(9)
        where = (wf.name, trigger.transport, trigger.destination)
        if not outcome.started:
            self.count(*where, "duplicate")
            log.info(
                "workflow %s: message key %r started run %s before", wf.name, key, outcome.run_id
            )
            return outcome.run_id
        self.count(*where, "started")
        engine.started_elsewhere(decision)
        return outcome.run_id

    def _reject(self, workflow: str, trigger: Trigger, message: Message, reason: str) -> None:
        self.count(workflow, trigger.transport, trigger.destination, "rejected")
        log.warning(
            "workflow %s: message %s on %s:%s starts no run: %s",
            workflow,
            message.id,
            trigger.transport,
            trigger.destination,
            reason,
        )
        self.rejected.append(
            {
                "workflow": workflow,
                "transport": trigger.transport,
                "destination": trigger.destination,
                "id": message.id,
                "reason": reason,
                "at": self.engine.clock(),
            }
        )


def _checked(wf: Workflow, trigger: Trigger, message: Message) -> tuple[str, dict[str, Any]] | None:
    """The message's dedupe key and run input, None when its filter drops it; Rejected (or any
    other exception, which the caller makes a rejection) when it can never start a run."""
    if len(message.data) > MAX_MESSAGE:
        raise Rejected(
            f"the message is {len(message.data)} bytes, more than the {MAX_MESSAGE} a trigger takes"
        )
    ctx = context(message)
    try:
        if trigger.filter is not None and not evaluate_truth(trigger.filter, ctx):
            return None
        key = default_key(trigger, message) if trigger.key is None else trigger.key.render(ctx)
        data = ctx["message"] if trigger.input is None else trigger.input.render(ctx)
    except TemplateError as exc:
        raise Rejected(f"a template failed: {exc}") from None
    text = _key_text(key, trigger.key is not None)
    if not isinstance(data, dict):
        raise Rejected(f"the input must be a JSON object, not {type(data).__name__}")
    data, problems = check_object(wf.inputs, data, "input")
    if problems:
        raise Rejected(str(InputError(problems)))
    try:
        size = len(orjson.dumps(data))
    except TypeError as exc:
        raise Rejected(f"the input holds a value JSON cannot: {exc}") from None
    if size > MAX_MESSAGE:
        raise Rejected(f"the run input is {size} bytes, more than the {MAX_MESSAGE} a run takes")
    return text, data


def _key_text(key: Any, templated: bool = False) -> str:
    if key is None or key == "":
        if templated:
            raise Rejected(
                f"the key template rendered {'null' if key is None else 'an empty text'}"
            )
        raise Rejected(
            "no dedupe key: the message has no id (e.g. an AMQP message without message_id) "
            "and the trigger gives no `key`"
        )
    try:
        text = key if isinstance(key, str) else orjson.dumps(key).decode()
    except TypeError as exc:
        raise Rejected(f"the key template rendered a value JSON cannot: {exc}") from None
    return stored_key(text)


def default_key(trigger: Trigger, message: Message) -> str | None:
    """The key without a `key` template: the message's id (the broker's, or a producer's id header)
    scoped by the trigger's transport and destination, so the same id on another topic of the
    workflow is another message. A written `key` is the user's business key and is not scoped."""
    if message.id is None or message.id == "":
        return None
    return f"{trigger.transport}:{trigger.destination}:{message.id}"


def stored_key(text: str) -> str:
    """`text` as the receipt keeps it: itself, or `sha256:<hex>` when long or unsafe to store."""
    if len(text) <= PLAIN_KEY and not _UNSAFE.search(text):
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def data_error(exc: BaseException) -> bool:
    """Whether the store refused *this* message's data (PostgreSQL's data exceptions, class 22, or a
    text the driver cannot encode), as opposed to a store that is down: the first rejects the
    message, the second has it delivered again."""
    if store_fault(exc) is not None:
        return False
    cur: BaseException | None = exc
    for _ in range(5):
        if cur is None:
            return False
        if isinstance(cur, UnicodeError | sqlite3.DataError):
            return True
        state = str(getattr(cur, "sqlstate", "") or "")
        if type(cur).__module__.startswith("asyncpg") and state.startswith("22"):
            return True
        cur = cur.__cause__
    return False
