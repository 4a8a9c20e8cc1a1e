"""Reads polled results: an HTTP location (404 until the result exists) or an S3 object.

S3 goes through aiobotocore (the `s3` extra), with the endpoint from `legato serve --s3-endpoint` (or
LEGATO_S3_ENDPOINT) for S3-compatible stores, and credentials and region from the usual AWS settings.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orjson

from legato.engine.outcome import Outcome

DEFAULT_MAX_RESULT = 16 * 1024 * 1024
DENIED = frozenset(
    {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
    | {"InvalidToken", "AllAccessDisabled", "NoSuchBucket"}
)


def _size(text: str | None) -> int:
    try:
        return max(1, int(text)) if text else DEFAULT_MAX_RESULT
    except ValueError:
        return DEFAULT_MAX_RESULT


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class S3Results:
    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint or os.environ.get("LEGATO_S3_ENDPOINT")
        self.max_size = _size(os.environ.get("LEGATO_S3_MAX_RESULT"))
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session

            session = get_session()
            self._client = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=self.endpoint,
                    region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                )
            )
        return self._client

    async def fetch(self, bucket: str, key: str) -> Outcome | None:
        """The object as the step's output (JSON when it parses), None while it does not exist.

        At most `max_size` bytes are read: a larger object fails the step (kind "limit") rather
        than fill the engine's memory. Access refused (AccessDenied, a bad key or signature) fails
        it at once (kind "config"): waiting would not change it."""
        where = f"s3://{bucket}/{key}"
        try:
            client = await self._s3()
            answer = await client.get_object(Bucket=bucket, Key=key)
            async with answer["Body"] as body:
                size = answer.get("ContentLength")
                if isinstance(size, int) and size > self.max_size:
                    return self._too_large(where, size)
                raw = await body.read(self.max_size + 1)
                if len(raw) > self.max_size:
                    return self._too_large(where, None)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code in DENIED:
                return Outcome.failure(
                    "config",
                    f"reading {where} was refused ({code}): Legato's S3 credentials need "
                    "s3:GetObject on it (and s3:ListBucket on the bucket, without which S3 also "
                    "answers AccessDenied for an object not written yet)",
                )
            return Outcome.failure(
                "network", f"reading {where} failed: {type(exc).__name__}: {exc}"
            )
        return Outcome(True, _decode(raw))

    def _too_large(self, where: str, size: int | None) -> Outcome:
        told = f"{size} bytes" if size is not None else "larger"
        return Outcome.failure(
            "limit",
            f"the result {where} is {told}; the limit is {self.max_size} bytes "
            "(LEGATO_S3_MAX_RESULT)",
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
