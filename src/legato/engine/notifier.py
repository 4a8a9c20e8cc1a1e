"""Tells people about runs: email (SMTP) and signed webhooks on a run's failure or success and on a
step's retry, as each workflow asks (`email`, `email_on_*`, `webhooks`).

It only hears decisions after they are committed, and sends from background tasks with a timeout
and a few retries each, so a slow or broken mail server or receiver never delays or fails a run.
What became of each notification is recorded in the store (`notifications`), failures included.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import aiosmtplib
import orjson

from legato.engine.egress import EgressPolicy, EgressRefused
from legato.engine.egress_http import EgressConnector
from legato.engine.state import FAILED, SUCCEEDED, WAITING, Decision, RunInfo
from legato.errors import LegatoError
from legato.masking import mask_text
from legato.model.workflow import Notify
from legato.store.protocol import NotificationRow, Store

log = logging.getLogger("legato.notify")

SIGNATURE_HEADER = "X-Legato-Signature"
TIMESTAMP_HEADER = "X-Legato-Timestamp"


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


def events_of(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    """The notifiable things a committed decision says: the run failed or succeeded, or a step
    failed and waits to be tried again."""
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


class Notifier:
    def __init__(self, store: Store, egress: EgressPolicy | None = None) -> None:
        self.store = store
        self.egress = egress or EgressPolicy()
        url = os.environ.get("LEGATO_SMTP_URL")
        self.smtp: Smtp | None = Smtp.from_url(url) if url else None
        self.secret = ""  # set when the engine starts (the store's "webhooks" secret)
        self.tries = 3
        self.timeout = 10.0
        self.backoff = 0.5  # seconds before the second try; doubles after each
        self.tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def on_committed(self, notify: Notify, decision: Decision, run: RunInfo | None) -> None:
        """Start a background send for each channel that wants one of the decision's events."""
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
                self._spawn(payload, "email", ", ".join(notify.email), self._email(notify, payload))
            for hook in notify.webhooks:
                if event in hook.on:
                    self._spawn(payload, "webhook", hook.url, self._webhook(hook.url, payload))

    def _spawn(
        self,
        payload: dict[str, Any],
        channel: str,
        target: str,
        send: Callable[[], Awaitable[None]],
    ) -> None:
        task = asyncio.create_task(self._deliver(payload, channel, target, send))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(
        self,
        payload: dict[str, Any],
        channel: str,
        target: str,
        send: Callable[[], Awaitable[None]],
    ) -> None:
        error: str | None = None
        tries = 0
        delay = self.backoff
        try:
            while tries < self.tries:
                tries += 1
                try:
                    await asyncio.wait_for(send(), self.timeout)
                    error = None
                    break
                except EgressRefused as exc:  # the policy will not change: no second try
                    error = f"{type(exc).__name__}: {exc}"
                    break
                except Exception as exc:  # whatever goes wrong is recorded, never raised
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    if tries < self.tries:
                        await asyncio.sleep(delay)
                        delay *= 2
        except asyncio.CancelledError:  # the engine stopped: what was cut short is recorded too
            error = "cut short: the engine stopped before the send finished"
        if error is not None:
            log.warning(
                "%s notification to %s failed after %d tries: %s",
                channel,
                mask_text(target),
                tries,
                mask_text(error),
            )
        row = NotificationRow(
            payload["run_id"],
            payload["event"],
            channel,
            target,
            error is None,
            tries,
            error,
            time.time(),
        )
        try:
            await self.store.record_notification(row)
        except Exception:
            log.exception("recording a notification of run %s failed", payload["run_id"])

    def _email(self, notify: Notify, payload: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            if self.smtp is None:
                raise LegatoError("no SMTP server is configured (LEGATO_SMTP_URL)")
            smtp = self.smtp
            message = EmailMessage()
            what = {"failure": "failed", "success": "succeeded", "retry": "is retrying a step"}
            step = f" (step {payload['step']})" if "step" in payload else ""
            message["Subject"] = (
                f"[Legato] {payload['workflow']} run {payload['run_id']} {what[payload['event']]}{step}"
            )
            message["From"] = smtp.sender
            message["To"] = ", ".join(notify.email)
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

        return send

    def _webhook(self, url: str, payload: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        body = orjson.dumps(payload)

        async def send() -> None:
            if self._http is None:
                self._http = aiohttp.ClientSession(connector=EgressConnector(self.egress))
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: stamp,
                SIGNATURE_HEADER: sign(self.secret, stamp, body),
            }
            # A redirect is refused like any other non-2xx answer: the body is not sent on.
            async with self._http.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if response.status >= 300:
                    raise LegatoError(f"the receiver answered {response.status}")

        return send

    async def close(self, grace: float = 2.0) -> None:
        """Give sends under way a moment, then stop them (what is cut short is recorded as
        failed)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
