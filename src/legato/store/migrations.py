"""Schema versions: each backend lists its migrations in order, and this decides which to apply.

A new database gets every migration. An existing one older than this Legato is upgraded only when asked
(`legato migrate`, or `legato serve --migrate`), so a deployment chooses when its schema changes; one
newer than this Legato is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Sequence

from legato.errors import LegatoError
from legato.masking import mask_url

Migration = tuple[int, str]  # (the version it brings the schema to, its SQL)


def to_apply(
    migrations: Sequence[Migration],
    current: int,
    url: str,
    *,
    allowed: bool,
    target: int | None = None,
) -> list[Migration]:
    """The migrations to run on a database at `current` (0: a new database)."""
    latest = migrations[-1][0] if target is None else target
    if current > migrations[-1][0]:
        url = mask_url(url)
        raise LegatoError(
            f"the database {url} has schema version {current}, newer than this Legato knows "
            f"({migrations[-1][0]}): upgrade Legato"
        )
    if current >= latest:
        return []
    if current > 0 and not allowed:
        url = mask_url(url)
        raise LegatoError(
            f"the database {url} has schema version {current}; this Legato needs {latest}: "
            f"run `legato migrate --db {url}` (or start the server with --migrate)"
        )
    return [m for m in migrations if current < m[0] <= latest]
