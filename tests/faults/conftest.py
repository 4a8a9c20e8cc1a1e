from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.faults.ownpg import OwnPostgres
from tests.integration.testservice import LoopbackService


@pytest.fixture
async def service() -> AsyncIterator[LoopbackService]:
    svc = LoopbackService()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of the test's own, started; the test may stop and start it."""
    pg = OwnPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()
