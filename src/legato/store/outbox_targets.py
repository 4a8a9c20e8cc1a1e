"""Which receiver an outbox row goes to, as the claim counts them: the webhook URL's scheme and
authority, lower-cased (so other paths or queries on one host do not make other receivers: a host
that hangs holds its slots whatever path it is called at), or one key for all email (one SMTP
server). The notifier keeps a few sends in flight per receiver, so one that hangs cannot take every
slot; the stores compute the same key in SQL (PostgreSQL with the same regex, SQLite by calling
`target_key`)."""

from __future__ import annotations

import re

EMAIL = "email:"
RECEIVER = re.compile(r"[^/?#]*(?://[^/?#]*)?")
RECEIVER_SQL = "^[^/?#]*(?://[^/?#]*)?"  # the same, for PostgreSQL's substring() (then lower())


def receiver(target: str) -> str:
    found = RECEIVER.match(target)
    return (found.group(0) if found else target).lower()


def target_key(channel: str, target: str) -> str:
    return EMAIL if channel == "email" else receiver(target)
