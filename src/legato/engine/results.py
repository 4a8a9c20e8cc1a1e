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


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class S3Results:
    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint or os.environ.get("LEGATO_S3_ENDPOINT")
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
        """The object as the step's output (JSON when it parses), None while it does not exist."""
        where = f"s3://{bucket}/{key}"
        try:
            client = await self._s3()
            answer = await client.get_object(Bucket=bucket, Key=key)
            async with answer["Body"] as body:
                raw = await body.read()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            # Without s3:ListBucket, a missing object answers 403 AccessDenied, not 404.
            if code in ("NoSuchKey", "404", "NotFound", "AccessDenied", "403"):
                return None
            return Outcome.failure(
                "network", f"reading {where} failed: {type(exc).__name__}: {exc}"
            )
        return Outcome(True, _decode(raw))

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
