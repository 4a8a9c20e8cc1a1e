"""Tells people about runs: email (SMTP) and signed webhooks on a run's failure or success and on a
step's retry, as each workflow asks (`email`, `email_on_*`, `webhooks`).

The notifications are written to the store's outbox in the same transaction as the decision that
causes them (engine/outbox.py), so a crash after a commit cannot lose one. This delivers them: a
background loop, woken after each commit that wrote some (and every few seconds, for rows a dead
engine left), claims due rows with a lease and sends each from its own task with a timeout, so a
slow or broken mail server or receiver never delays a run. At most PER_TARGET sends are in flight
per receiver (a webhook URL without its query; all email counts as one), and the claim skips the
rows of a receiver at that bound, so one that hangs holds PER_TARGET of the slots, not all. A
failed try is retried with backoff; each keeps its delivery id (`Legato-Delivery`), for the
receiver to dedupe what a crash makes it send twice. What became of each is recorded in the store (`notifications`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import aiosmtplib
import orjson

from legato.engine.egress import EgressPolicy, EgressRefused
from legato.engine.egress_http import EgressConnector
from legato.engine.outbox import events_of
from legato.errors import LegatoError
from legato.masking import mask_text
from legato.store.outbox_targets import target_key
from legato.store.protocol import NotificationRow, OutboxItem, Store

log = logging.getLogger("legato.notify")

SIGNATURE_HEADER = "X-Legato-Signature"
TIMESTAMP_HEADER = "X-Legato-Timestamp"
DELIVERY_HEADER = "Legato-Delivery"  # the same on every try of one notification: dedupe on it
POLL = 5.0  # the longest the loop sleeps: rows a dead engine left are found this soon
CONCURRENCY = 32  # sends under way at once
PER_TARGET = 4  # of which at most this many to one receiver (store/outbox_targets.py)
CLAIM_GAP = 0.05  # seconds between two claims at least
TELL_EVERY = 10.0  # seconds between two log lines about the store failing
T = TypeVar("T", int, float)
__all__ = ["DELIVERY_HEADER", "Notifier", "Smtp", "events_of", "sign"]


@dataclass(frozen=True, slots=True)
class Smtp:
    """Where email goes: `smtp://[user:password@]host[:port]?from=legato@example.com[&starttls=1]`
    (`smtps://` for TLS from the start)."""

    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    tls: bool = False
    starttls: bool = False

    @classmethod
    def from_url(cls, url: str) -> Smtp:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise LegatoError(f"an SMTP URL is smtp://host:port?from=address, not {url!r}")
        query = parse_qs(parts.query)
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if tls else 25),
            sender=query.get("from", ["legato@localhost"])[0],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
            starttls=query.get("starttls", ["0"])[0] in ("1", "true"),
        )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature: HMAC-SHA256 of "<timestamp>.<body>" with the store's webhook secret,
    so a receiver checks both who sent it and that it is not a replay of an old one."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Notifier:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.egress = egress or EgressPolicy()
        url = os.environ.get("LEGATO_SMTP_URL")
        self.smtp: Smtp | None = Smtp.from_url(url) if url else None
        self.secret = ""  # set when the engine starts (the store's "webhooks" secret)
        self.claimant = ""  # set when the engine starts (its id): who holds a claimed row
        # 12 tries, 0.5 s apart at first, doubling up to 300 s: about 14 minutes of trying.
        self.tries = _env_number("LEGATO_NOTIFY_TRIES", 12, int)
        self.timeout = _env_number("LEGATO_NOTIFY_TIMEOUT", 10.0, float)
        self.backoff = 0.5  # seconds before the second try; doubles after each
        self.max_backoff = 300.0
        self.poll = POLL
        self.concurrency = CONCURRENCY
        self.per_target = PER_TARGET
        self.tasks: dict[int, asyncio.Task[None]] = {}  # sends under way, by outbox row
        self._targets: dict[int, str] = {}  # their receivers, by outbox row
        self._cut: list[OutboxItem] = []  # sends a stop cut short: handed back on close
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._told = -TELL_EVERY  # when store trouble was last logged (monotonic)
        self._troubles = 0

    @property
    def lease(self) -> float:
        """How long a claim lasts: well past a send's timeout, so no live send is taken over."""
        return 2 * self.timeout + 5.0

    def start(self) -> None:
        """Deliver what the outbox holds now (a previous process's too) and whatever comes."""
        self._wake = asyncio.Event()
        self._loop = asyncio.create_task(self._deliver_forever(), name="legato-notify")

    def wake(self) -> None:
        """A commit wrote outbox rows: look now."""
        if self._wake is not None:
            self._wake.set()

    async def _deliver_forever(self) -> None:
        assert self._wake is not None
        claimed = -CLAIM_GAP
        while True:
            # A claim reads every due row (to skip busy receivers' ones): a stream of commits
            # waking this must not make it claim back to back.
            await asyncio.sleep(max(claimed + CLAIM_GAP - time.monotonic(), 0.0))
            claimed = time.monotonic()
            self._wake.clear()
            delay = self.poll
            try:
                free = self.concurrency - len(self.tasks)
                found = await self._claim()
                # Fewer than asked: what is due now is held by others or by busy receivers. Only
                # a send ending or a commit (both wake this) or a later row can change that.
                after = self.clock() if found < free else None
                nxt = await self.store.next_outbox(after)
                if nxt is not None:
                    delay = min(max(nxt - self.clock(), 0.0), self.poll)
                if not found or len(self.tasks) >= self.concurrency:
                    delay = max(delay, 0.05)  # due rows others hold, or no free slot: not a spin
            except Exception as exc:
                self._store_trouble("reading the notification outbox", exc)
                delay = 1.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):  # not wait_for: it can swallow a cancel
                        await self._wake.wait()

    async def _claim(self) -> int:
        free = self.concurrency - len(self.tasks)
        if free <= 0:
            return 0
        held = Counter(self._targets.values())
        items = await self.store.claim_outbox(
            self.claimant, self.clock(), free, self.lease, self.per_target, held
        )
        for item in items:
            if item.id in self.tasks:  # still under way here (its lease ran out): it settles it
                continue
            task = asyncio.create_task(self._deliver(item))
            self.tasks[item.id] = task
            self._targets[item.id] = target_key(item.channel, item.target)
            task.add_done_callback(functools.partial(self._done, item.id))
        return len(items)

    def _done(self, key: int, task: asyncio.Task[None]) -> None:
        self.tasks.pop(key, None)
        self._targets.pop(key, None)
        self.wake()  # a slot is free

    async def _deliver(self, item: OutboxItem) -> None:
        error: str | None = None
        final = False  # no further try, whatever the count
        if item.attempts > self.tries:  # its last tries were cut short (crashes, stops)
            error = item.error or "cut short: the engine stopped before the send finished"
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._send(item)
            except asyncio.CancelledError:
                self._cut.append(item)  # the engine stops: the next one sends it
                raise
            except TimeoutError:
                error = f"no answer within {self.timeout:g}s"
            except EgressRefused as exc:  # the policy will not change: no further try
                error = f"{type(exc).__name__}: {exc}"
                final = True
            except Exception as exc:  # whatever goes wrong is recorded, never raised
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = self.clock()
        tries = min(item.attempts, self.tries)
        try:
            if error is not None and item.attempts < self.tries and not final:
                delay = min(self.backoff * 2 ** (item.attempts - 1), self.max_backoff)
                await self.store.settle_outbox(
                    item.id, self.claimant, retry_at=now + delay, error=error
                )
                return
            if error is not None:
                log.warning(
                    "%s notification %s to %s failed after %d tries: %s",
                    item.channel,
                    item.delivery_id,
                    mask_text(item.target),
                    tries,
                    mask_text(error),
                )
            row = NotificationRow(
                item.run_id,
                item.event,
                item.channel,
                item.target,
                error is None,
                tries,
                error,
                now,
                item.delivery_id,
            )
            await self.store.settle_outbox(item.id, self.claimant, record=row)
        except Exception as exc:  # the claim's lease runs out and the row is tried again
            self._store_trouble("settling a notification", exc)

    def _store_trouble(self, what: str, exc: Exception) -> None:
        """A store that is down fails every look: say so once in a while, not once a second."""
        self._troubles += 1
        now = time.monotonic()
        if now - self._told >= TELL_EVERY:
            log.warning(
                "%s failed (%d times since the last report): %s: %s",
                what,
                self._troubles,
                type(exc).__name__,
                exc,
            )
            self._told, self._troubles = now, 0

    async def _send(self, item: OutboxItem) -> None:
        if item.channel == "email":
            await self._email(item)
        else:
            await self._webhook(item)

    async def _email(self, item: OutboxItem) -> None:
        if self.smtp is None:
            raise LegatoError("no SMTP server is configured (LEGATO_SMTP_URL)")
        smtp, payload = self.smtp, item.payload
        message = EmailMessage()
        what = {"failure": "failed", "success": "succeeded", "retry": "is retrying a step"}
        step = f" (step {payload['step']})" if "step" in payload else ""
        message["Subject"] = (
            f"[Legato] {payload['workflow']} run {payload['run_id']} {what[item.event]}{step}"
        )
        message["From"] = smtp.sender
        message["To"] = item.target
        message["Message-ID"] = f"<{item.delivery_id}@legato>"
        message[DELIVERY_HEADER] = item.delivery_id
        message.set_content(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        await aiosmtplib.send(
            message,
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            use_tls=smtp.tls,
            start_tls=smtp.starttls,
            timeout=self.timeout,
        )

    async def _webhook(self, item: OutboxItem) -> None:
        body = orjson.dumps(item.payload)
        if self._http is None:
            self._http = aiohttp.ClientSession(  # no cookie jar: receivers' cookies are not kept
                connector=EgressConnector(self.egress), cookie_jar=aiohttp.DummyCookieJar()
            )
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: item.delivery_id,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(self.secret, stamp, body),
        }
        # A redirect is refused like any other non-2xx answer: the body is not sent on.
        async with self._http.post(
            item.target, data=body, headers=headers, allow_redirects=False
        ) as response:
            if response.status >= 300:
                raise LegatoError(f"the receiver answered {response.status}")

    async def close(self, grace: float = 2.0) -> None:
        """Give sends under way a moment, then stop them and hand their rows back to the outbox,
        for the next engine (or another sharing the store) to send."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=grace)
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for item in self._cut:
            with contextlib.suppress(Exception):
                await self.store.settle_outbox(
                    item.id,
                    self.claimant,
                    retry_at=self.clock(),
                    error="cut short: the engine stopped before the send finished",
                )
        self._cut.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _env_number(name: str, default: T, kind: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise LegatoError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise LegatoError(f"{name} must be above 0, not {raw!r}")
    return value
