"""Where CoWorks calls go when a step gives `api_id`/`stage`/`token` instead of `cws_name`, and
where asynchronous results are left.

CoWorks calls AWS API Gateway at `https://{api_id}.execute-api.eu-west-1.amazonaws.com/{stage}`;
tests and local setups point the same DAG file at local services without editing it, through
`configure(...)` or the environment (read when a DAG file builds its workflow):

- LEGATO_COWORKS_API_URL: the base URL template, with `{api_id}`, `{stage}` and `{region}`;
- LEGATO_COWORKS_REGION: the AWS region (eu-west-1, as CoWorks);
- LEGATO_COWORKS_BUCKET: the bucket asynchronous results are written to (coworks-airflow);
- LEGATO_COWORKS_POLL_EVERY: seconds between two looks for an asynchronous result (5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from legato.errors import DefinitionError, Problem

DEFAULT_API_URL = "https://{api_id}.execute-api.{region}.amazonaws.com/{stage}"


@dataclass
class Settings:
    api_url: str | None = None
    region: str | None = None
    bucket: str | None = None
    poll_every: float | None = None

    def url(self, api_id: str, stage: str) -> str:
        template = self.api_url or os.environ.get("LEGATO_COWORKS_API_URL") or DEFAULT_API_URL
        region = self.region or os.environ.get("LEGATO_COWORKS_REGION") or "eu-west-1"
        try:
            return template.format(api_id=api_id, stage=stage, region=region).rstrip("/")
        except (KeyError, IndexError, ValueError) as exc:
            raise DefinitionError(
                [Problem("api_url", f"bad template {template!r}: {exc}")], "CoWorks setting"
            ) from None

    def result_bucket(self) -> str:
        return self.bucket or os.environ.get("LEGATO_COWORKS_BUCKET") or "coworks-airflow"

    def every(self) -> float:
        if self.poll_every is not None:
            return self.poll_every
        raw = os.environ.get("LEGATO_COWORKS_POLL_EVERY", "5")
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise DefinitionError(
                [Problem("LEGATO_COWORKS_POLL_EVERY", f"must be a positive number, not {raw!r}")],
                "CoWorks setting",
            )
        return value


SETTINGS = Settings()


def configure(
    *,
    api_url: str | None = None,
    region: str | None = None,
    bucket: str | None = None,
    poll_every: float | None = None,
) -> None:
    """Set where api_id/stage calls go (`api_url`, a template with {api_id}, {stage}, {region}),
    the results bucket and the polling interval; None leaves a setting to the environment."""
    SETTINGS.api_url = api_url
    SETTINGS.region = region
    SETTINGS.bucket = bucket
    SETTINGS.poll_every = poll_every
