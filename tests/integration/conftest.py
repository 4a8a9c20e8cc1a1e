from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from legato import Engine, Service
from tests.integration.testservice import LoopbackService


@pytest.fixture
async def service() -> AsyncIterator[LoopbackService]:
    svc = LoopbackService()
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'legato.db'}"


@pytest.fixture
async def engine(db_url: str, service: LoopbackService) -> AsyncIterator[Engine]:
    async with Engine.open(db_url) as eng:
        await eng.put_service(Service(name="svc", base_url=service.url, timeout=5))
        yield eng
