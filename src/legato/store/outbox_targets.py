"""Which receiver an outbox row goes to, as the claim counts them: the webhook URL without its
query and fragment (so varying a query does not make another receiver), or one key for all email
(one SMTP server). The notifier keeps a few sends in flight per receiver, so one that hangs cannot
take every slot; the stores compute the same key in SQL (the PostgreSQL regex and this one agree)."""

from __future__ import annotations

import re

EMAIL = "email:"
RECEIVER = re.compile(r"[^?#]*")
RECEIVER_SQL = "^[^?#]*"  # the same, for PostgreSQL's substring()


def receiver(target: str) -> str:
    found = RECEIVER.match(target)
    return found.group(0) if found else target


def target_key(channel: str, target: str) -> str:
    return EMAIL if channel == "email" else receiver(target)
