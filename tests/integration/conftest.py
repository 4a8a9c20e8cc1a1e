from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from legato import Engine, Service
from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server process per test module (tests give their workflows distinct names)."""
    proc = start_server(tmp_path_factory.mktemp("server"), "--max-body", "65536")
    yield proc
    proc.stop()


@pytest.fixture
async def api(server: ServerProcess, service: LoopbackService) -> AsyncIterator[AsyncClient]:
    """An async client of the module's server, with the test's loopback service registered as `svc`."""
    async with AsyncClient(server.url) as client:
        await client.add_service(
            {"name": "svc", "base_url": service.url, "timeout": 5}, replace=True
        )
        yield client
