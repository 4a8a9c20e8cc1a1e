"""Task tokens for async calls: `<run>.<attempt>.<step>.<signature>`, signed with the store's secret.

A token names the one attempt it may complete, so a late or repeated callback cannot touch a newer
attempt; the HMAC means a token cannot be guessed or forged, and since the secret lives in the store a
token stays good across restarts and in every process that shares the database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import NamedTuple


class TaskRef(NamedTuple):
    run_id: str
    step: str
    attempt: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TaskTokens:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:18])

    def issue(self, run_id: str, step: str, attempt: int) -> str:
        body = f"{run_id}.{attempt}.{_b64(step.encode())}"
        return f"{body}.{self._sign(body)}"

    def read(self, token: str) -> TaskRef | None:
        """The attempt a token names, or None if it was not made by this store's secret."""
        parts = token.split(".")
        if len(parts) != 4:
            return None
        run_id, attempt, step, signature = parts
        body = f"{run_id}.{attempt}.{step}"
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            return TaskRef(run_id, _unb64(step).decode(), int(attempt))
        except ValueError:
            return None
