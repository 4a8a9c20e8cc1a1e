from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from legato import Engine, Service
from legato.client import AsyncClient
from tests.integration.brokers import postgres_url
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService


@pytest.fixture(scope="session", autouse=True)
def _kafka_broker() -> Iterator[None]:
    """Stops the Kafka-protocol broker the Kafka tests started, if they did (see kafka.py)."""
    yield
    from tests.integration import kafka

    kafka.stop()


@pytest.fixture
async def service() -> AsyncIterator[LoopbackService]:
    svc = LoopbackService()
    await svc.start()
    yield svc
    await svc.stop()


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """The URL of a new PostgreSQL schema, dropped afterwards (skips, or fails under CI=true,
    when PostgreSQL is not there)."""
    base = postgres_url()
    schema = f"legato_test_{uuid.uuid4().hex[:12]}"
    yield f"{base}?schema={schema}"
    import asyncpg

    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each engine test runs on every backend: a SQLite file, and a fresh schema in PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'legato.db'}"
        return
    async with fresh_schema() as url:
        yield url


@pytest.fixture
async def shared_db() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for several engines or processes to share."""
    async with fresh_schema() as url:
        yield url


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


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's real S3 server on a free loopback port, with test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
